"""BM25 on retrieval tasks: its score matrices, shared by the reference row and the ``--hybrid`` fusion."""

from __future__ import annotations

import numpy as np

from ...core.outputs import fusion
from ..data import RetrievalTask
from ..metrics import matrix_scores

# BM25 score matrices by task name: one BM25 run per task, whatever the number of methods.
BM25Cache = dict[str, np.ndarray]


def bm25_scores(task: RetrievalTask, cache: BM25Cache | None = None) -> np.ndarray:
    """BM25's ``(queries, documents)`` scores of ``task``, from ``cache`` when it holds them."""
    if cache is not None and task.name in cache:
        return cache[task.name]
    doc_ids, query_ids = list(task.corpus), list(task.queries)
    scores = fusion.bm25_scores([task.queries[q] for q in query_ids], [task.corpus[d] for d in doc_ids])
    if cache is not None:
        cache[task.name] = scores
    return scores


def evaluate_bm25(task: RetrievalTask, cache: BM25Cache | None = None) -> dict[str, float]:
    """The retrieval metrics of BM25 alone (the reference row)."""
    return matrix_scores(task.qrels, bm25_scores(task, cache), list(task.corpus), list(task.queries))
