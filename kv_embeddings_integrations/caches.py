"""Where computed results are kept: the user cache, and the copies shipped inside the package.

Layer selection and post-processing are deterministic for a given checkpoint, configuration,
dtype and set of texts, and each costs a minute or more on a laptop CPU. Each result is a file
named by a digest of everything it depends on (its key, which the file also holds and which is
checked on reading). The user cache is where results are written; for the bundled models and the
configurations a user tries first, the package ships the same files, made by
``scripts/precompute_bundled.py``, which are read when the user cache has none.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import platformdirs

# Every variable of the package starts with KV_EMBED_; the earlier KV_EMBEDDINGS_ names still work
# (the new name wins where both are set).
CACHE_ENV = "KV_EMBED_CACHE"
LEGACY_CACHE_ENV = "KV_EMBEDDINGS_CACHE"
# Set to "0" to ignore the shipped results (scripts/precompute_bundled.py recomputes them so).
SHIPPED_ENV = "KV_EMBED_SHIPPED"
LEGACY_SHIPPED_ENV = "KV_EMBEDDINGS_SHIPPED"


def environment(name: str, legacy: str) -> str | None:
    """``$name``, else the same setting under its earlier name ``$legacy`` (empty: unset)."""
    return os.environ.get(name) or os.environ.get(legacy) or None


def cache_dir() -> Path:
    """The package's cache root: ``$KV_EMBED_CACHE`` (or ``$KV_EMBEDDINGS_CACHE``), else the
    platform's user cache directory."""
    root = environment(CACHE_ENV, LEGACY_CACHE_ENV)
    return Path(root or platformdirs.user_cache_dir("kv_embeddings_integrations"))


def shipped_dir() -> Path:
    """The results shipped with the package (``data/precomputed``), laid out like the cache."""
    return Path(str(resources.files("kv_embeddings_integrations") / "data" / "precomputed"))


def key_digest(key: dict[str, Any]) -> str:
    """The file name stem for ``key``: 24 hex digits of the SHA-256 of its sorted JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def cached_file(kind: str, key: dict[str, Any], suffix: str) -> Path:
    """Where the user cache keeps (and a computation writes) the ``kind`` result for ``key``."""
    return cache_dir() / kind / f"{key_digest(key)}{suffix}"


# How a log line says where a result came from (see candidate_files).
ORIGIN_WORDS = {"cache": "cached", "shipped": "shipped with the package"}


def candidate_files(kind: str, key: dict[str, Any], suffix: str) -> Iterator[tuple[Path, str]]:
    """The files that may hold the result for ``key``, in the order to try them, each with where it
    comes from: ``"cache"`` (the user's, written by an earlier run) then ``"shipped"``."""
    yield cached_file(kind, key, suffix), "cache"
    if (environment(SHIPPED_ENV, LEGACY_SHIPPED_ENV) or "1") != "0":
        yield shipped_dir() / kind / f"{key_digest(key)}{suffix}", "shipped"
