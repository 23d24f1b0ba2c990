"""Quality against output precision: the same final vectors scored as a store holding them would.

- ``float16`` / ``int8`` / ``uint8``: cosine of the stored numbers (what a vector store computes on
  an int8 column; no dequantization).
- ``binary`` / ``ubinary``: minus the Hamming distance of the packed bits; for retrieval also a
  second row, shortlisting each query's top
  [`RESCORE_TOP`][kv_embeddings_integrations.evaluation.precision.RESCORE_TOP] documents by
  Hamming distance and ranking them by float32 cosine (the float32 vectors kept off the index,
  read for the shortlist).

Each row names the bytes a vector takes in that precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..core.outputs import fusion
from ..core.outputs.quantization import bytes_per_vector, check_precision, hamming_scores, unpack_bits
from .data import RetrievalTask, STSTask
from .metrics import _unit, matrix_scores, sts_spearman
from .results import Row

RESCORE_TOP = 100
"""Documents a binary precision shortlists per query, reranked by float32 cosine."""
BINARY = frozenset({"binary", "ubinary"})


def _scores(queries: np.ndarray, docs: np.ndarray, precision: str) -> np.ndarray:
    if precision in BINARY:
        return hamming_scores(queries, docs, precision).astype(np.float32)
    scores: np.ndarray = _unit(queries.astype(np.float32)) @ _unit(docs.astype(np.float32)).T
    return scores


def _what(precision: str, dimension: int) -> str:
    how = "Hamming distance of the packed bits" if precision in BINARY else "cosine of the stored values"
    return f"{precision}, {bytes_per_vector(precision, dimension)} bytes per vector; {how}"


def sts_rows(
    precisions: Sequence[str], quantize: Callable[[np.ndarray, str], np.ndarray], vectors: np.ndarray, task: STSTask
) -> list[Row]:
    """One row per precision of an STS task's final ``vectors`` (sentences1 then sentences2)."""
    from scipy.stats import spearmanr  # the eval extra, as sts_spearman's

    rows: list[Row] = []
    n, dimension = len(task), vectors.shape[1]
    for precision in map(check_precision, precisions):
        q = quantize(vectors, precision)
        if precision in BINARY:
            # Spearman of minus the Hamming distance of each pair: the pairs' ranks are all it reads.
            bits = unpack_bits(q, precision, dimension)
            pair = -(bits[:n] != bits[n:]).sum(axis=1).astype(np.float64)
            metrics = {"spearman": 100.0 * float(spearmanr(pair, np.asarray(task.scores)).statistic)}
        else:
            metrics = {"spearman": sts_spearman(q[:n].astype(np.float32), q[n:].astype(np.float32), task.scores)}
        rows.append((precision, _what(precision, dimension), metrics))
    return rows


def retrieval_rows(
    precisions: Sequence[str],
    quantize: Callable[[np.ndarray, str], np.ndarray],
    queries: np.ndarray,
    docs: np.ndarray,
    task: RetrievalTask,
) -> list[Row]:
    """One row per precision of a retrieval task's final vectors, and for binary ones a second row
    with the top [`RESCORE_TOP`][kv_embeddings_integrations.evaluation.precision.RESCORE_TOP] by
    Hamming distance reranked by float32 cosine."""
    doc_ids, query_ids = list(task.corpus), list(task.queries)
    exact = _unit(queries) @ _unit(docs).T  # the float32 cosines binary shortlists are reranked by
    rows: list[Row] = []
    for precision in map(check_precision, precisions):
        scores = _scores(quantize(queries, precision), quantize(docs, precision), precision)
        rows.append((precision, _what(precision, docs.shape[1]), matrix_scores(task.qrels, scores, doc_ids, query_ids)))
        if precision in BINARY:
            top = min(RESCORE_TOP, len(doc_ids))
            shortlist = fusion.top_k(scores, top)
            rescored = np.full_like(exact, -np.inf)
            rows_index = np.arange(len(query_ids))[:, None]
            rescored[rows_index, shortlist] = exact[rows_index, shortlist]
            how = f"{precision} shortlist of the top {top} by Hamming distance, reranked by float32 cosine"
            rows.append((f"{precision}, rescored", how, matrix_scores(task.qrels, rescored, doc_ids, query_ids)))
    return rows
