"""The int8 / uint8 ranges of an embedder: fitted once on its post-processing texts, then cached.

Like the post-processing fit, and keyed by everything that fit depends on (whatever its kind, the
fitting texts included) plus :data:`RANGES_VERSION`: a changed prompt, layer, weight or fit
refits. Saved as safetensors with the key in the file's metadata, checked on reading.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open
from safetensors.numpy import load_file
from safetensors.numpy import save as save_bytes

from .cache import ORIGIN_WORDS, cached_file, candidate_files, write_atomically
from .identity import postprocess_texts, postprocessing_key
from .quantization import MIN_TEXTS, QuantizationRanges, fit_ranges

if TYPE_CHECKING:
    from .embedder import KVEmbedder

logger = logging.getLogger(__name__)

# Bump when fitting the ranges changes, so cached entries stop matching.
RANGES_VERSION = 1


def ranges_key(embedder: KVEmbedder) -> dict[str, Any]:
    """What the ranges depend on: everything the post-processing fit does (whatever its kind), the
    fitting texts included, and the ranges' own version."""
    return {"ranges_version": RANGES_VERSION, **postprocessing_key(embedder, postprocess_texts(embedder.config))}


def load(path: Path, key: dict[str, Any]) -> QuantizationRanges | None:
    """The cached ranges made for exactly ``key``, or ``None`` (missing or unusable file)."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
        if json.loads(metadata.get("key", "null")) != key:
            raise ValueError("key mismatch")
        tensors = load_file(str(path))
        return QuantizationRanges(tensors["low"], tensors["high"])
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - a corrupt cache entry is refitted, never fatal
        logger.warning("ignoring unusable quantization-ranges cache %s (%s); refitting", path, e)
        return None


def ranges_for(embedder: KVEmbedder) -> QuantizationRanges:
    """``embedder``'s int8 / uint8 ranges: read from the cache (or the package's shipped files), else
    fitted on its post-processing texts (document prompt, final normalised vectors) and cached."""
    key = ranges_key(embedder)
    for path, origin in candidate_files("quantization", key, ".safetensors"):
        if (ranges := load(path, key)) is not None:
            logger.info("%s: int8 ranges %s", embedder.name, ORIGIN_WORDS[origin])
            return ranges
    texts = postprocess_texts(embedder.config)
    if len(set(texts)) < MIN_TEXTS:
        raise ValueError(f"quantization ranges need at least {MIN_TEXTS} distinct texts to fit, got {len(set(texts))}")
    logger.info("%s: fitting int8 ranges on %d texts (once, then cached)", embedder.name, len(texts))
    ranges = fit_ranges(embedder.embed(texts).vectors)
    data = save_bytes({"low": ranges.low, "high": ranges.high}, metadata={"key": json.dumps(key, sort_keys=True)})
    write_atomically(cached_file("quantization", key, ".safetensors"), lambda f: f.write(data))
    return ranges
