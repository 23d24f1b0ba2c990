"""Scores of dense, sparse and BM25 retrieval, and their fusion (hybrid search, exactly, in memory).

Every function returns or takes a ``(queries, documents)`` score matrix, so any two systems fuse the
same way: [`minmax_fusion`][kv_embeddings_integrations.core.outputs.fusion.minmax_fusion] (each
query's scores scaled to [0, 1] per system, then a weighted sum) or
[`reciprocal_rank_fusion`][kv_embeddings_integrations.core.outputs.fusion.reciprocal_rank_fusion]
(the sum of ``1 / (k + rank)``, the fusion Qdrant and most stores use).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..extras import require
from .sparse import SparseVectors

BM25_TOKENIZATION = "bm25s: lower-cased words of 2+ word characters, English stopwords removed, Snowball English stems"


def dense_scores(queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
    """Dot products (cosine for normalised vectors): ``(len(queries), len(documents))`` float32."""
    scores: np.ndarray = np.asarray(queries, dtype=np.float32) @ np.asarray(documents, dtype=np.float32).T
    return scores


def cosine_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix between two sets of vectors (any normalisation), ``(len(a), len(b))``."""
    a = np.atleast_2d(a)
    b = np.atleast_2d(b)
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(min=1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(min=1e-12)
    scores: np.ndarray = a @ b.T
    return scores


def idf(documents: SparseVectors) -> np.ndarray:
    """Each token's inverse document frequency over ``documents``:
    ``ln(1 + (N - n + 0.5) / (n + 0.5))`` (BM25's, and what Qdrant's ``Modifier.IDF`` computes over
    a collection), ``(vocab_size,)``."""
    frequency = np.zeros(documents.vocab_size, dtype=np.float64)
    for ids in documents.indices:
        frequency[ids] += 1
    total = len(documents)
    return np.log(1 + (total - frequency + 0.5) / (frequency + 0.5))


def sparse_scores(queries: SparseVectors, documents: SparseVectors, weights: np.ndarray | None = None) -> np.ndarray:
    """Dot products of sparse lexical vectors: ``(len(queries), len(documents))`` float32.

    Args:
        queries: the queries' sparse vectors.
        documents: the documents'.
        weights: per-token factors on the query side, e.g. [`idf`][kv_embeddings_integrations.core.outputs.fusion.idf]
            of the documents (the model's weights say which words of a text matter; the corpus says
            which words are rare).
    """
    if queries.vocab_size != documents.vocab_size:
        raise ValueError(
            f"queries index a vocabulary of {queries.vocab_size} tokens, documents one of "
            f"{documents.vocab_size}: they come from different models"
        )
    scores = np.zeros((len(queries), len(documents)), dtype=np.float64)
    if not len(documents):
        return scores.astype(np.float32)
    # An inverted index: every (token, document, weight), sorted by token.
    tokens = np.concatenate(documents.indices)
    rows = np.repeat(np.arange(len(documents)), [len(i) for i in documents.indices])
    values = np.concatenate(documents.values).astype(np.float64)
    order = np.argsort(tokens, kind="stable")
    tokens, rows, values = tokens[order], rows[order], values[order]
    for q, (ids, query_values) in enumerate(zip(queries.indices, queries.values, strict=True)):
        factors = query_values.astype(np.float64) * (weights[ids] if weights is not None else 1.0)
        starts, stops = np.searchsorted(tokens, ids, "left"), np.searchsorted(tokens, ids, "right")
        for start, stop, factor in zip(starts, stops, factors, strict=True):
            np.add.at(scores[q], rows[start:stop], factor * values[start:stop])
    return scores.astype(np.float32)


def bm25_scores(queries: Sequence[str], documents: Sequence[str]) -> np.ndarray:
    """BM25 (bm25s' Lucene variant, k1 1.5, b 0.75) of every query against every document.

    Tokenisation: ``BM25_TOKENIZATION`` (needs ``bm25s`` and ``PyStemmer``: the ``eval`` extra).
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
