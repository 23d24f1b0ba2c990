"""Label-free post-processing of embeddings: mean-centering, PCA and whitening.

LLM hidden states are strongly anisotropic (every pair of texts has a cosine near 0.9): removing the
common mean direction spreads them out, and PCA drops dimensions the data barely uses (cheaper
vector stores). Fitted once, without labels, on sample texts embedded with the document prompt, then
cached as a safetensors file (no pickle) keyed by
[`postprocessing_key`][kv_embeddings_integrations.core.identity.postprocessing_key]; the package
ships the default's fit for its bundled models (see
[`cache`][kv_embeddings_integrations.core.cache]).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import (
    ORIGIN_WORDS,
    cached_file,
    cached_or_computed,
    read_keyed_tensors,
    write_keyed_tensors,
)
from ..identity import FitSubject, postprocess_texts, postprocessing_key

logger = logging.getLogger(__name__)

KINDS = ("none", "center", "standardize", "pca", "whiten")
MIN_TEXTS = 20
# A change to fitting must bump identity.FIT_VERSION, so the cached (and shipped) fits stop matching.


@dataclass
class PostProcessor:
    """A fitted transform: ``(x - mean) @ components.T / scale`` (the last two when PCA is on),
    then L2 normalisation.

    Attributes:
        kind: ``"center"``, ``"standardize"``, ``"pca"`` or ``"whiten"``.
        mean: ``(hidden,)`` mean of the fitting vectors.
        components: ``(k, hidden)`` principal axes (rows), or ``None`` for ``"center"``.
        scale: ``(k,)`` per-axis standard deviations for ``"whiten"`` (of the principal axes) and
            ``"standardize"`` (of the dimensions themselves), else ``None``.
    """

    kind: str
    mean: np.ndarray
    components: np.ndarray | None = None
    scale: np.ndarray | None = None

    @property
    def dimensions(self) -> int:
        return int(self.mean.shape[0] if self.components is None else self.components.shape[0])

    def apply(self, vectors: np.ndarray, normalize: bool = True) -> np.ndarray:
        """Transform ``(n, hidden)`` vectors into ``(n, dimensions)`` float32 ones."""
        x = np.asarray(vectors, dtype=np.float32) - self.mean
        if self.components is not None:
            x = x @ self.components.T
        if self.scale is not None:
            x = x / self.scale
        if normalize:
            x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
        return np.ascontiguousarray(x, dtype=np.float32)

    def tensors(self) -> dict[str, np.ndarray]:
        """The arrays to save, by name."""
        out = {"mean": self.mean}
        if self.components is not None:
            out["components"] = self.components
        if self.scale is not None:
            out["scale"] = self.scale
        return out


def fit(vectors: np.ndarray, kind: str, dimensions: int | None = None) -> PostProcessor:
    """Fit ``kind`` post-processing on ``(n, hidden)`` vectors (L2-normalised embeddings)."""
    if kind not in KINDS[1:]:
        raise ValueError(f"postprocess must be one of {KINDS[1:]} to fit, got {kind!r}")
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < MIN_TEXTS:
        raise ValueError(f"post-processing needs at least {MIN_TEXTS} vectors to fit, got shape {x.shape}")
    mean = x.mean(axis=0)
    if kind == "center":
        return PostProcessor(kind, mean.astype(np.float32))
    if kind == "standardize":
        # Each dimension to unit variance: a few wide dimensions of LLM states stop dominating the cosine.
        std = x.std(axis=0)
        return PostProcessor(kind, mean.astype(np.float32), scale=np.where(std > 0, std, 1.0).astype(np.float32))
    centered = x - mean
    # Right singular vectors: the principal axes, by decreasing variance.
    _, singular, axes = np.linalg.svd(centered, full_matrices=False)
    rank = int((singular > singular[0] * 1e-6).sum())
    k = min(dimensions or rank, rank)
    if dimensions is not None and dimensions > rank:
        raise ValueError(
            f"dimensions={dimensions} is more than the fitting vectors span ({rank}); fit on more texts "
            "(postprocess_texts) or ask for fewer dimensions"
        )
    components = axes[:k].astype(np.float32)
    scale = None
    if kind == "whiten":
        scale = (singular[:k] / np.sqrt(max(1, x.shape[0] - 1))).astype(np.float32)
    return PostProcessor(kind, mean.astype(np.float32), components, scale)


def cache_path(key: dict[str, Any]) -> Path:
    """Where the user cache keeps (and a fit writes) the transform for ``key``."""
    return cached_file("postprocessing", key, ".safetensors")


def load(path: Path, key: dict[str, Any]) -> PostProcessor | None:
    """The cached transform made for exactly ``key``, or ``None`` (missing or unusable file)."""

    def build(tensors: dict[str, np.ndarray]) -> PostProcessor:
        return PostProcessor(key["kind"], tensors["mean"], tensors.get("components"), tensors.get("scale"))

    return read_keyed_tensors(path, key, build, "post-processing")


def save(path: Path, key: dict[str, Any], processor: PostProcessor) -> None:
    """Write ``processor`` to ``path``, with ``key`` in the file's metadata (checked on reading)."""
    write_keyed_tensors(path, key, processor.tensors())


def processor_for(
    subject: FitSubject, vectors: Callable[[list[str]], np.ndarray], given: PostProcessor | None = None
) -> PostProcessor | None:
    """The post-processing ``subject``'s resolved method asks for: read from the cache, else
    fitted on its fitting texts' ``vectors``.

    Args:
        subject: the model and method, its layers chosen.
        vectors: the unit vectors of texts embedded with the document prompt, before any
            post-processing (run only when no cached fit matches).
        given: an already fitted post-processing to use instead (must be of the asked kind).

    Returns:
        the post-processing, or ``None`` when the method asks for none.
    """
    kind = subject.resolved.postprocess
    if kind == "none":
        return None
    if given is not None:
        if given.kind != kind:
            raise ValueError(f"postprocessor is {given.kind!r}, the config asks {kind!r}")
        return given
    texts = postprocess_texts(subject.config)
    if len(set(texts)) < MIN_TEXTS:
        raise ValueError(f"post-processing needs at least {MIN_TEXTS} distinct texts to fit, got {len(set(texts))}")
    key = postprocessing_key(subject, texts)

    def compute() -> PostProcessor:
        logger.info(
            "%s: fitting the %s post-processing on %d texts (once, then cached)", subject.name, kind, len(texts)
        )
        return fit(vectors(texts), kind, subject.resolved.dimensions)

    processor, origin = cached_or_computed(
        "postprocessing",
        key,
        ".safetensors",
        lambda path, _: load(path, key),
        compute,
        lambda path, p: save(path, key, p),
    )
    if origin != "computed":
        logger.info("%s: %s post-processing, the fit %s", subject.name, processor.kind, ORIGIN_WORDS[origin])
    return processor
