"""The cache plumbing: where computed results are kept, how they are named, written and fingerprinted.

Layer selection and post-processing are deterministic for a given checkpoint, configuration,
dtype and set of texts, and each costs a minute or more on a laptop CPU. Each result is a file
named by a digest of everything it depends on (its key, which
[`identity`][kv_embeddings_integrations.core.identity] defines and the file also holds, checked on
reading). The user cache is where results are written; for the bundled models and the
configurations a user tries first, the package ships the same files, made by
``scripts/precompute_bundled.py``, which are read when the user cache has none.

Writes are atomic (a temporary file in the same folder, then a rename): a reader (another
process, a resumed run) sees the old file or the new one, never half of one, and concurrent
writers cannot interleave their bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import platformdirs
import torch
from safetensors import safe_open
from safetensors.numpy import load_file
from safetensors.numpy import save as save_tensors

logger = logging.getLogger(__name__)
T = TypeVar("T")

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


def cached_or_computed(
    kind: str,
    key: dict[str, Any],
    suffix: str,
    read: Callable[[Path, str], T | None],
    compute: Callable[[], T],
    write: Callable[[Path, T], None],
    *,
    reuse: bool = True,
) -> tuple[T, str]:
    """The ``kind`` result for ``key``: the user's cached file, else the package's shipped one,
    else computed and written to the user cache. Every fit of the package (layer selection,
    post-processing, int8 ranges, lexical statistics) goes through here.

    Args:
        kind: the cache folder (``"layer_selection"``, ``"postprocessing"``...).
        key: what the result depends on (the file is named by its digest and holds it).
        suffix: the file's suffix.
        read: the result held by a file made for exactly ``key`` (given its path and origin), or
            ``None`` for a missing or unusable one.
        compute: the result, computed (run only when no file holds it).
        write: writes a computed result to a path.
        reuse: read the files (``False``: compute again; the result still replaces the cached one).

    Returns:
        the result and where it came from (``"cache"``, ``"shipped"`` or ``"computed"``), as a pair.
    """
    if reuse:
        for path, origin in candidate_files(kind, key, suffix):
            if (found := read(path, origin)) is not None:
                logger.debug("%s read from %s", kind, path)
                return found, origin
    result = compute()
    write(cached_file(kind, key, suffix), result)
    return result, "computed"


def read_keyed_tensors(path: Path, key: dict[str, Any], build: Callable[[dict[str, Any]], T], what: str) -> T | None:
    """What ``build`` makes of the tensors of a safetensors file written for exactly ``key``
    ([`write_keyed_tensors`][kv_embeddings_integrations.core.cache.write_keyed_tensors]), or
    ``None``: no file, or an unusable one (another key, corrupt, missing a tensor; logged as
    ``what``, to be computed again, never fatal)."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
        if json.loads(metadata.get("key", "null")) != key:
            raise ValueError("key mismatch")
        return build(load_file(str(path)))
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - a corrupt cache entry is recomputed, never fatal
        logger.warning("ignoring unusable %s cache %s (%s); refitting", what, path, e)
        return None


def write_keyed_tensors(path: Path, key: dict[str, Any], tensors: dict[str, Any]) -> None:
    """Write ``tensors`` to ``path`` as safetensors, with ``key`` in the file's metadata (checked
    on reading); a concurrent reader never sees a half-written file."""
    data = save_tensors(tensors, metadata={"key": json.dumps(key, sort_keys=True)})
    write_atomically(path, lambda f: f.write(data))


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create or replace ``path`` with what ``write`` writes to a binary file object."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        # mkstemp makes the file owner-only; give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_fingerprint(model: torch.nn.Module, *, round_to: torch.dtype | None = None) -> str:
    """A cheap hash of a model's weights: shape, dtype and up to 128 sampled values of each tensor.

    Reading every weight of an 8B model would cost seconds; a sample tells checkpoints apart.

    Args:
        model: the module whose ``state_dict`` is hashed.
        round_to: round sampled floating-point values to this dtype and leave the tensors' dtypes
            out, so loads of one checkpoint in float32 and in ``round_to`` hash alike; ``None``
            hashes the values and dtypes as loaded.
    """
    digest = hashlib.sha256()
    for name, param in model.state_dict().items():
        dtype = "" if round_to is not None else f":{param.dtype}"
        digest.update(f"{name}:{tuple(param.shape)}{dtype}".encode())
        if param.device.type == "meta" or param.numel() == 0:
            continue
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // 64)
        sample = torch.cat([flat[:64], flat[::step][:64]]).to("cpu")
        if round_to is None:
            sample = sample.to(torch.float64)
        elif sample.is_floating_point():
            sample = sample.to(round_to).to(torch.float32)
        else:  # quantized integer weights: as stored, they do not depend on a load dtype
            sample = sample.to(torch.int64)
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def texts_digest(texts: Sequence[str]) -> str:
    """SHA-256 of the texts joined by NUL: which sample a cache entry (or a resumable run) was computed on."""
    return hashlib.sha256("\x00".join(texts).encode("utf-8", "surrogatepass")).hexdigest()
