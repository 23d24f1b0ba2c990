"""One encoder's vectors for the task evaluators: cached, and with its optional steps made explicit.

[`Embeddings`][kv_embeddings_integrations.evaluation.embeddings.Embeddings] is the one place that
asks which capabilities of [`encoders`][kv_embeddings_integrations.evaluation.encoders] an encoder
has; an encoder without one gets the identity (no post-processing, no lexical half) or ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.outputs.lexical import LexicalChannel, SparseRow
from ..core.outputs.sparse import SparseVectors
from .cache import EmbeddingCache, cached_encode, cached_encode_sparse
from .encoders import Encoder, LexicalEncoder, PostProcessed, Quantizer, SparseEncoder


class Embeddings:
    """Cached encodes of one encoder (vectors before post-processing), and its optional steps.

    Args:
        encoder: the method.
        cache_directory: the embedding cache folder (``None``: embed everything, store nothing).

    Attributes:
        embedded: texts embedded so far (the rest came from the cache).
        sparse_encoder: the encoder, if it gives sparse vectors from the same pass.
        quantizer: the encoder, if its final vectors can be scored in other precisions.
    """

    def __init__(self, encoder: Encoder, cache_directory: Path | None) -> None:
        self.encoder = encoder
        self.directory = cache_directory
        self.embedded = 0
        self._post = encoder if isinstance(encoder, PostProcessed) else None
        self._lexical = encoder if isinstance(encoder, LexicalEncoder) else None
        self.sparse_encoder: SparseEncoder | None = encoder if isinstance(encoder, SparseEncoder) else None
        self.quantizer: Quantizer | None = encoder if isinstance(encoder, Quantizer) else None

    def _cache(self, prompt_type: str) -> EmbeddingCache | None:
        return EmbeddingCache(self.directory, self.encoder.namespace(prompt_type)) if self.directory else None

    def __call__(self, texts: Sequence[str], prompt_type: str) -> np.ndarray:
        cache = self._cache(prompt_type)
        try:
            vectors, embedded = cached_encode(lambda t: self.encoder.encode(t, prompt_type), list(texts), cache)
        finally:
            if cache is not None:
                cache.close()
        self.embedded += embedded
        return vectors

    def with_sparse(self, texts: Sequence[str], prompt_type: str) -> tuple[np.ndarray, SparseVectors]:
        """Dense vectors and the same pass's sparse vectors (the encoder must be a `SparseEncoder`)."""
        encoder = self.sparse_encoder
        if encoder is None:
            raise TypeError(f"{self.encoder.label} gives no sparse vectors")
        cache = self._cache(prompt_type)
        try:
            vectors, rows, embedded = cached_encode_sparse(
                lambda t: encoder.encode_with_sparse(t, prompt_type), list(texts), cache
            )
        finally:
            if cache is not None:
                cache.close()
        self.embedded += embedded
        sparse = SparseVectors(tuple(r[0] for r in rows), tuple(r[1] for r in rows), encoder.vocab_size)
        return vectors, sparse

    @property
    def fit(self) -> str:
        """Where the post-processing is fitted (``"builtin"`` for an encoder without one)."""
        return self._post.fit if self._post is not None else "builtin"

    def finish(self, vectors: np.ndarray, fit_on: np.ndarray | None = None) -> np.ndarray:
        """The final vectors of cached ``vectors``: the encoder's post-processing, if it has one."""
        return self._post.finish(vectors, fit_on) if self._post is not None else vectors

    @property
    def channel(self) -> LexicalChannel | None:
        """The lexical half the encoder appends to its finished vectors (``None``: none)."""
        return self._lexical.lexical if self._lexical is not None else None

    def with_lexical(
        self, vectors: np.ndarray, texts: list[str], prompt_type: str, sparse: SparseVectors | None
    ) -> tuple[np.ndarray, list[SparseRow]]:
        """Finished ``vectors`` with their lexical half, and the unsketched lexical rows."""
        if self._lexical is None:
            raise TypeError(f"{self.encoder.label} has no lexical half")
        return self._lexical.with_lexical(vectors, texts, prompt_type, sparse)

    @property
    def vocab_size(self) -> int:
        """The width of the sparse and lexical rows."""
        encoder = self._lexical or self.sparse_encoder
        if encoder is None:
            raise TypeError(f"{self.encoder.label} has no sparse or lexical rows")
        return encoder.vocab_size

    def lexical(self, finished: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """Finished document-side vectors with the encoder's lexical half, when it has one."""
        channel = self.channel
        if channel is None:
            return finished
        sparse = self.with_sparse(texts, "document")[1] if channel.kind == "sparse" else None
        return self.with_lexical(finished, list(texts), "document", sparse)[0]
