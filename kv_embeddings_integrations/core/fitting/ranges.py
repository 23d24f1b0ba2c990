"""The int8 / uint8 ranges of an embedder: fitted once on its post-processing texts, then cached.

Like the post-processing fit, and keyed by everything that fit depends on (whatever its kind, the
fitting texts included) plus ``RANGES_VERSION``: a changed prompt, layer, weight or fit refits.
Saved as safetensors with the key in the file's metadata, checked on reading
([`read_keyed_tensors`][kv_embeddings_integrations.core.cache.read_keyed_tensors]).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import ORIGIN_WORDS, cached_or_computed, read_keyed_tensors, write_keyed_tensors
from ..identity import FitSubject, postprocess_texts, postprocessing_key
from ..outputs.quantization import MIN_TEXTS, QuantizationRanges, fit_ranges

logger = logging.getLogger(__name__)

# Bump when fitting the ranges changes, so cached entries stop matching.
RANGES_VERSION = 1


def ranges_key(embedder: FitSubject) -> dict[str, Any]:
    """What the ranges depend on: everything the post-processing fit does (whatever its kind), the
    fitting texts included, and the ranges' own version."""
    key = {"ranges_version": RANGES_VERSION, **postprocessing_key(embedder, postprocess_texts(embedder.config))}
    if embedder.lexical is not None:
        # The ranges cover the lexical half too (absent without one: the shipped ranges still match).
        key["lexical"] = embedder.lexical.record()
    return key


def load(path: Path, key: dict[str, Any]) -> QuantizationRanges | None:
    """The cached ranges made for exactly ``key``, or ``None`` (missing or unusable file)."""
    return read_keyed_tensors(
        path, key, lambda tensors: QuantizationRanges(tensors["low"], tensors["high"]), "quantization-ranges"
    )


def ranges_for(subject: FitSubject, vectors: Callable[[list[str]], np.ndarray]) -> QuantizationRanges:
    """``subject``'s int8 / uint8 ranges: read from the cache (or the package's shipped files), else
    fitted on the final normalised ``vectors`` of its post-processing texts (document prompt) and
    cached."""
    key = ranges_key(subject)

    def compute() -> QuantizationRanges:
        texts = postprocess_texts(subject.config)
        if len(set(texts)) < MIN_TEXTS:
            raise ValueError(
                f"quantization ranges need at least {MIN_TEXTS} distinct texts to fit, got {len(set(texts))}"
            )
        logger.info("%s: fitting int8 ranges on %d texts (once, then cached)", subject.name, len(texts))
        return fit_ranges(vectors(texts))

    def write(path: Path, ranges: QuantizationRanges) -> None:
        write_keyed_tensors(path, key, {"low": ranges.low, "high": ranges.high})

    read = lambda path, _: load(path, key)  # noqa: E731 - the origin does not matter here
    ranges, origin = cached_or_computed("quantization", key, ".safetensors", read, compute, write)
    if origin != "computed":
        logger.info("%s: int8 ranges %s", subject.name, ORIGIN_WORDS[origin])
    return ranges
