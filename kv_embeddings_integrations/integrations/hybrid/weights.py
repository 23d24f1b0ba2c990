"""Which sparse vectors a hybrid adapter hands the store: the one choice both adapters offer."""

from __future__ import annotations

from collections.abc import Callable

from ...core.embedder import KVEmbedder
from ...core.outputs.sparse import SparseVectors

# "model": the same pass's sparse vectors (PromptReps; give the store Qdrant's IDF modifier);
# "lexical": the embedder's lexical channel unsketched (BM25 over its tokens by default; queries
# carry the IDF, so no modifier).
SPARSE_WEIGHTS = ("model", "lexical")


def sparse_encoder(embedder: KVEmbedder, weights: str) -> Callable[..., SparseVectors]:
    """``embedder``'s method that gives ``weights``' sparse vectors (``texts, prompt_type=...``),
    checked now: an unknown name, or ``"lexical"`` without a lexical channel, is a
    ``ValueError``."""
    if weights not in SPARSE_WEIGHTS:
        raise ValueError(f"weights must be one of {SPARSE_WEIGHTS}, got {weights!r}")
    if weights == "model":
        return embedder.encode_sparse
    if embedder.lexical is None:
        raise ValueError("weights='lexical' needs an embedder with a lexical channel (lexical='bm25' or 'sparse')")
    return embedder.encode_lexical
