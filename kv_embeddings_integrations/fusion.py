"""Scores of dense, sparse and BM25 retrieval, and their fusion (hybrid search, exactly, in memory).

Every function returns or takes a ``(queries, documents)`` score matrix, so any two systems fuse the
same way: :func:`minmax_fusion` (each query's scores scaled to [0, 1] per system, then a weighted
sum) or :func:`reciprocal_rank_fusion` (the sum of ``1 / (k + rank)``, the fusion Qdrant and most
stores use).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .extras import require
from .sparse import SparseVectors

BM25_TOKENIZATION = "bm25s: lower-cased words of 2+ word characters, English stopwords removed, Snowball English stems"


def dense_scores(queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
    """Dot products (cosine for normalised vectors): ``(len(queries), len(documents))`` float32."""
    return np.asarray(queries, dtype=np.float32) @ np.asarray(documents, dtype=np.float32).T


def sparse_scores(queries: SparseVectors, documents: SparseVectors) -> np.ndarray:
    """Dot products of sparse lexical vectors: ``(len(queries), len(documents))`` float32 (needs SciPy)."""
    require("eval", "sparse scores", ("scipy",))
    if queries.vocab_size != documents.vocab_size:
        raise ValueError(
            f"queries index a vocabulary of {queries.vocab_size} tokens, documents one of "
            f"{documents.vocab_size}: they come from different models"
        )
    return np.asarray((queries.to_csr() @ documents.to_csr().T).todense(), dtype=np.float32)


def bm25_scores(queries: Sequence[str], documents: Sequence[str]) -> np.ndarray:
    """BM25 (bm25s' Lucene variant, k1 1.5, b 0.75) of every query against every document.

    Tokenisation: :data:`BM25_TOKENIZATION` (needs ``bm25s`` and ``PyStemmer``: the ``eval`` extra).
    """
    require("eval", "BM25 scores", ("bm25s", "Stemmer"))
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    corpus = bm25s.tokenize(list(documents), stopwords="en", stemmer=stemmer, show_progress=False)
    index = bm25s.BM25()
    index.index(corpus, show_progress=False)
    asked = bm25s.tokenize(list(queries), stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)
    scores = np.zeros((len(queries), len(documents)), dtype=np.float32)
    for row, tokens in enumerate(asked):
        # Words the corpus never saw score nothing (bm25s would fail on them).
        known = [t for t in tokens if t in corpus.vocab]
        if known:
            scores[row] = index.get_scores(known)
    return scores


def _check(scores: Sequence[np.ndarray], weights: Sequence[float] | None) -> list[np.ndarray]:
    if not scores:
        raise ValueError("fusion needs at least one score matrix")
    arrays = [np.asarray(s, dtype=np.float64) for s in scores]
    if any(a.shape != arrays[0].shape or a.ndim != 2 for a in arrays):
        raise ValueError(f"score matrices must share one (queries, documents) shape, got {[a.shape for a in arrays]}")
    if weights is not None and len(weights) != len(arrays):
        raise ValueError(f"{len(weights)} weights for {len(arrays)} score matrices")
    return arrays


def minmax_fusion(*scores: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Normalised-score fusion: each system's scores of a query scaled to [0, 1] over all documents
    (a query whose scores are all equal gets 0), then summed with ``weights`` (default: equal)."""
    arrays = _check(scores, weights)
    fused = np.zeros_like(arrays[0])
    for array, weight in zip(arrays, weights or [1.0] * len(arrays), strict=True):
        low, high = array.min(axis=1, keepdims=True), array.max(axis=1, keepdims=True)
        span = np.where(high > low, high - low, 1.0)
        fused += weight * np.where(high > low, (array - low) / span, 0.0)
    return fused


def ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every document for every query (ties broken by document order)."""
    order = np.argsort(-np.asarray(scores), axis=1, kind="stable")
    out = np.empty_like(order)
    np.put_along_axis(out, order, np.arange(1, order.shape[1] + 1)[None, :].repeat(order.shape[0], 0), axis=1)
    return out


def reciprocal_rank_fusion(
    *scores: np.ndarray, k: float = 60.0, depth: int | None = None, weights: Sequence[float] | None = None
) -> np.ndarray:
    """Reciprocal-rank fusion (Cormack et al. 2009): ``sum weight / (k + rank)`` over the systems.

    Args:
        scores: one ``(queries, documents)`` matrix per system.
        k: the ranking constant (60 in the paper; Qdrant's ``Fusion.RRF`` uses 1 in this form).
        depth: only each system's top ``depth`` documents count (a store fuses what its searches
            returned); ``None``: all.
        weights: per system (default: equal).

    A score of ``-inf`` means "not retrieved" (a sparse search returns only documents sharing a
    token with the query): such a document gets nothing from that system.
    """
    arrays = _check(scores, weights)
    fused = np.zeros_like(arrays[0])
    for array, weight in zip(arrays, weights or [1.0] * len(arrays), strict=True):
        rank = ranks(array)
        contribution = np.where(np.isfinite(array), weight / (k + rank), 0.0)
        if depth is not None:
            contribution = np.where(rank <= depth, contribution, 0.0)
        fused += contribution
    return fused


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of each query's ``k`` best documents, best first (ties by document order)."""
    return np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]
