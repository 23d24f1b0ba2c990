"""The ``--hybrid`` rows of a retrieval task: a method's sparse vectors (from its dense pass) alone,
and fused with its dense scores or with BM25's."""

from __future__ import annotations

import numpy as np

from ...core.outputs import fusion
from ...core.outputs.sparse import SparseVectors
from ..data import RetrievalTask
from ..metrics import _unit, matrix_scores
from ..results import Row
from .bm25 import BM25Cache, bm25_scores


def hybrid_rows(
    task: RetrievalTask,
    queries: np.ndarray,
    docs: np.ndarray,
    query_sparse: SparseVectors,
    doc_sparse: SparseVectors,
    bm25: BM25Cache | None = None,
) -> list[Row]:
    """One row per system, from the final dense ``queries`` / ``docs`` and the same pass's sparse vectors."""
    doc_ids, query_ids = list(task.corpus), list(task.queries)
    dense = fusion.dense_scores(_unit(queries), _unit(docs))  # the cosines exact_search ranks by
    lexical = fusion.sparse_scores(query_sparse, doc_sparse)
    rare = fusion.sparse_scores(query_sparse, doc_sparse, fusion.idf(doc_sparse))
    lexical_bm25 = bm25_scores(task, bm25)
    systems = [
        ("sparse", "its sparse vectors alone (same pass), dot product", lexical),
        ("sparse IDF", "its sparse vectors, query weights times the corpus's IDF", rare),
        ("dense+sparse", "min-max fusion, equal weights", fusion.minmax_fusion(dense, lexical)),
        ("dense+sparse IDF", "min-max fusion with the IDF sparse scores", fusion.minmax_fusion(dense, rare)),
        (
            "dense+sparse IDF RRF",
            "reciprocal-rank fusion (k 60) with the IDF sparse scores",
            fusion.reciprocal_rank_fusion(dense, rare),
        ),
        ("dense+BM25", "min-max fusion with BM25, equal weights", fusion.minmax_fusion(dense, lexical_bm25)),
    ]
    return [(name, how, matrix_scores(task.qrels, scores, doc_ids, query_ids)) for name, how, scores in systems]
