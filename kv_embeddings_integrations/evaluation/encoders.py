"""What the evaluation asks of a method: a base
[`Encoder`][kv_embeddings_integrations.evaluation.encoders.Encoder] and the optional capabilities
some encoders add, each its own Protocol.

A reference model (sentence-transformers) is a plain `Encoder`; the package's own methods
([`KVVariant`][kv_embeddings_integrations.evaluation.kv_encoder.KVVariant]) have every capability.
[`Embeddings`][kv_embeddings_integrations.evaluation.embeddings.Embeddings] finds out once which
ones an encoder has; the task evaluators ask it, never the encoder.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..core.outputs.lexical import LexicalChannel, SparseRow
from ..core.outputs.sparse import SparseVectors


class Encoder(Protocol):
    """What every method gives: a label, a description, a cache namespace and ``encode``."""

    @property
    def label(self) -> str: ...

    @property
    def description(self) -> str: ...

    def namespace(self, prompt_type: str) -> dict[str, Any]:
        """Everything that determines the vectors of ``prompt_type``'s texts (the cache's key)."""
        ...

    def encode(self, texts: list[str], prompt_type: str) -> np.ndarray:
        """The vectors that are cached: for a post-processed encoder, before its post-processing."""
        ...


@runtime_checkable
class PostProcessed(Protocol):
    """An encoder whose cached vectors still need its post-processing, fitted where ``fit`` says
    (one of [`FITS`][kv_embeddings_integrations.evaluation.variants.FITS])."""

    @property
    def fit(self) -> str: ...

    def finish(self, vectors: np.ndarray, fit_on: np.ndarray | None = None) -> np.ndarray:
        """The final vectors of cached ``vectors``; ``fit_on``: what a fit other than the built-in one reads."""
        ...


@runtime_checkable
class SparseEncoder(Protocol):
    """An encoder that gives sparse ``(ids, weights)`` rows from the pass that gives the dense vectors."""

    @property
    def vocab_size(self) -> int: ...

    def encode_with_sparse(self, texts: list[str], prompt_type: str) -> tuple[np.ndarray, list[SparseRow]]: ...


@runtime_checkable
class LexicalEncoder(Protocol):
    """An encoder that may append a lexical half to its finished vectors (``lexical`` ``None``: it does not)."""

    @property
    def lexical(self) -> LexicalChannel | None: ...

    @property
    def vocab_size(self) -> int: ...

    def with_lexical(
        self, vectors: np.ndarray, texts: list[str], prompt_type: str, sparse: SparseVectors | None
    ) -> tuple[np.ndarray, list[SparseRow]]:
        """The finished vectors with their lexical half, and the unsketched lexical rows."""
        ...


@runtime_checkable
class Quantizer(Protocol):
    """An encoder whose final vectors can be scored in other output precisions (``--precision``)."""

    def quantize(self, vectors: np.ndarray, precision: str) -> np.ndarray: ...
