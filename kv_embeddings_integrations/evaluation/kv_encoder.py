"""The package's own methods as evaluation encoders: one loaded model, one embedder per variant."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..core.config import LEXICAL_OPTIONS
from ..core.model.loading import LoadOptions
from ..core.outputs.lexical import LexicalChannel, SparseRow
from ..core.outputs.quantization import SCALAR
from ..core.outputs.sparse import SparseVectors
from ..version import __version__

if TYPE_CHECKING:
    from ..core.embedder import KVEmbedder


class KVVariant:
    """One method (and its options) of the core embedder, sharing a loaded model with the others.

    It is an [`Encoder`][kv_embeddings_integrations.evaluation.encoders.Encoder] with every optional
    capability of [`encoders`][kv_embeddings_integrations.evaluation.encoders]: post-processing,
    sparse vectors, a lexical half and output precisions.
    """

    def __init__(self, label: str, embedder: KVEmbedder, model_name: str, weights: str, fit: str = "builtin") -> None:
        self.label = label
        self.embedder = embedder
        self.fit = fit
        self._identity = {
            "model": model_name,
            "weights": weights,
            "dtype": str(embedder.dtype),
        }

    @property
    def description(self) -> str:
        e = self.embedder
        family = e.resolved.family
        routed = f"layers {e.layers}, bias {e.config.bias}, " if e.layers else ""
        prepended = f"token prepending {e.prepend_layers}, " if e.prepend_layers else ""
        where = {"builtin": "", "corpus": " fitted on the task's corpus", "sides": " fitted on each side"}[self.fit]
        post = f", {e.config.postprocess} to {e.dimension}{where}" if e.postprocessor else ""
        return (
            f"{e.config.resolved_method} ({family}): {routed}{prepended}pooling {e.pooling} of layer {e.output_layer}"
            f"{post}, max_length {e.max_length}, {self._identity['dtype']}"
        )

    def namespace(self, prompt_type: str) -> dict[str, Any]:
        # The vectors before post-processing are what is cached (finish() applies it), so variants
        # that differ only in post-processing share their embeddings.
        config = self.embedder.config.vector_options()
        for name in ("postprocess", "dimensions", "postprocess_texts", *LEXICAL_OPTIONS):
            config.pop(name)
        texts = config.pop("calibration_texts")
        config["calibration_texts"] = hashlib.sha256("\n".join(texts).encode()).hexdigest() if texts else None
        return {
            "encoder": "kv_embeddings_integrations",
            "version": __version__,
            **self._identity,
            "config": config,
            "layers": self.embedder.layers,
            "max_length": self.embedder.max_length,
            "prompt_type": prompt_type,
        }

    def encode(self, texts: list[str], prompt_type: str) -> np.ndarray:
        """The vectors before post-processing and the lexical half (what the cache holds)."""
        result = self.embedder.embed(texts, prompt_type=prompt_type, postprocess=False)
        result.warn_truncated(self.embedder.max_length, stacklevel=2)
        return result.vectors

    def encode_with_sparse(self, texts: list[str], prompt_type: str) -> tuple[np.ndarray, list[SparseRow]]:
        """Dense vectors and sparse ``(ids, weights)`` rows from one pass per batch."""
        result = self.embedder.embed(texts, prompt_type=prompt_type, postprocess=False, sparse=True)
        result.warn_truncated(self.embedder.max_length, stacklevel=2)
        assert result.sparse is not None  # asked for with sparse=True
        return result.vectors, list(zip(result.sparse.indices, result.sparse.values, strict=True))

    @property
    def vocab_size(self) -> int:
        return self.embedder.vocab_size

    @property
    def lexical(self) -> LexicalChannel | None:
        """The embedder's lexical channel, appended to the finished vectors (``None``: none)."""
        lexical: LexicalChannel | None = self.embedder.lexical
        return lexical

    def with_lexical(
        self, vectors: np.ndarray, texts: list[str], prompt_type: str, sparse: SparseVectors | None
    ) -> tuple[np.ndarray, list[SparseRow]]:
        """The finished dense vectors with their lexical half (as ``encode`` returns them), and the
        unsketched unit lexical vectors' exact cosines' inputs: ``(one vectors, exact rows)``."""
        rows = self.embedder.lexical_rows(texts, prompt_type=prompt_type, sparse=sparse)
        side = self.embedder.resolved.side(prompt_type)
        assert self.lexical is not None
        return self.lexical.vectors(vectors, rows, side), rows

    def quantize(self, vectors: np.ndarray, precision: str) -> np.ndarray:
        """Final vectors in ``precision``, as the embedder's ``encode(precision=...)`` returns them."""
        if self.fit != "builtin" and precision in SCALAR:
            # The ranges are fitted on the built-in fit's vectors; another fit's fall outside them.
            raise ValueError(f"{self.label}: int8 / uint8 are measured with the built-in fit only")
        return self.embedder.quantize(vectors, precision)

    def finish(self, vectors: np.ndarray, fit_on: np.ndarray | None = None) -> np.ndarray:
        """The post-processing, applied to (cached)
        [`encode`][kv_embeddings_integrations.evaluation.kv_encoder.KVVariant.encode] vectors: the
        embedder's fitted one, or (``fit_on``, with ``fit`` other than builtin) the same kind fitted
        on those vectors."""
        from ..core.fitting.postprocessing import fit

        processor = self.embedder.postprocessor
        if processor is None:
            return vectors
        if fit_on is not None and self.fit != "builtin":
            processor = fit(fit_on, self.embedder.config.postprocess, self.embedder.config.dimensions)
        return processor.apply(vectors)


def kv_variants(
    model: str | LoadOptions,
    variants: Sequence[tuple[str, dict[str, Any]]],
    *,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    max_length: int | None = None,
    batch_size: int | None = None,
) -> list[KVVariant]:
    """Load ``model`` once and wrap it in one embedder per variant (automatic layers are cached).

    ``model`` is a name (loaded with ``dtype`` and ``device``) or
    [`LoadOptions`][kv_embeddings_integrations.core.model.loading.LoadOptions] (which hold them).
    """
    from ..core.cache import model_fingerprint
    from ..core.embedder import KVEmbedder

    load_options = LoadOptions.of(model, dtype=dtype, device=device)
    common: dict[str, Any] = {
        k: v for k, v in (("max_length", max_length), ("batch_size", batch_size)) if v is not None
    }
    base = KVEmbedder.from_pretrained(load_options, layers=None, **common)
    weights = model_fingerprint(base.model)
    out = []
    for label, options in variants:
        options = dict(options)
        fit = options.pop("fit", "builtin")
        embedder = KVEmbedder(base.model, base.tokenizer, base.config, name=base.name, **{"layers": "auto", **options})
        out.append(KVVariant(label, embedder, load_options.model, weights, fit))
    return out
