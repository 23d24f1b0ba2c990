"""Retrieval: exact cosine search of the queries over the corpus, and the rows from the same pass:
the lexical half's parts, the ``--precision`` rows and the ``--hybrid`` fusions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...core.outputs import fusion
from ...core.outputs.lexical import SparseRow, unit
from ...core.outputs.sparse import SparseVectors
from .. import precision as precision_rows
from ..data import RetrievalTask
from ..embeddings import Embeddings
from ..metrics import exact_search, matrix_scores, retrieval_scores
from ..results import Row, Scores
from .bm25 import BM25Cache
from .hybrid import hybrid_rows


def evaluate_retrieval(
    embed: Embeddings,
    task: RetrievalTask,
    *,
    hybrid: bool = False,
    bm25: BM25Cache | None = None,
    precisions: Sequence[str] = (),
) -> Scores:
    """Embed ``task``'s documents and queries and score the search.

    Args:
        embed: the method's embeddings.
        task: the corpus, queries and qrels.
        hybrid: also score the method's sparse vectors and their fusions (when it gives them).
        bm25: BM25 score matrices by task name, shared across methods (the dense + BM25 row).
        precisions: output precisions to score the final vectors in too.
    """
    doc_ids, query_ids = list(task.corpus), list(task.queries)
    doc_texts, query_texts = [task.corpus[d] for d in doc_ids], [task.queries[q] for q in query_ids]
    channel = embed.channel
    sparse = hybrid and embed.sparse_encoder is not None
    doc_sparse: SparseVectors | None = None
    query_sparse: SparseVectors | None = None
    if sparse or (channel is not None and channel.kind == "sparse"):
        docs, doc_sparse = embed.with_sparse(doc_texts, "document")
        queries, query_sparse = embed.with_sparse(query_texts, "query")
    else:
        docs, queries = embed(doc_texts, "document"), embed(query_texts, "query")
    raw_docs = docs
    docs = embed.finish(docs, raw_docs)
    queries = embed.finish(queries, queries if embed.fit == "sides" else raw_docs)
    extra: list[Row] = []
    if channel is not None:
        # The one vector (dense ++ sketched lexical half), and beside it what it approximates:
        # the dense part alone, and the exact fusion of the unsketched unit lexical vectors.
        dense_part = fusion.dense_scores(queries, docs)
        docs, doc_rows = embed.with_lexical(docs, doc_texts, "document", doc_sparse)
        queries, query_rows = embed.with_lexical(queries, query_texts, "query", query_sparse)
        exact = lexical_fusion_scores(dense_part, query_rows, doc_rows, channel.weight, embed.vocab_size)
        extra += [
            ("dense part", "the dense half alone", matrix_scores(task.qrels, dense_part, doc_ids, query_ids)),
            (
                "exact fusion",
                f"(1 - w) cos dense + w cos lexical, unsketched, w {channel.weight}",
                matrix_scores(task.qrels, exact, doc_ids, query_ids),
            ),
        ]
    metrics = retrieval_scores(task.qrels, exact_search(queries, docs, doc_ids, query_ids, top_k=100))
    quantizer = embed.quantizer if precisions else None
    if quantizer is not None:
        extra += precision_rows.retrieval_rows(precisions, quantizer.quantize, queries, docs, task)
    if sparse:
        assert doc_sparse is not None and query_sparse is not None  # embedded with them above
        extra += hybrid_rows(task, queries, docs, query_sparse, doc_sparse, bm25)
    return Scores(metrics, extra)


def lexical_fusion_scores(
    dense: np.ndarray, query_rows: Sequence[SparseRow], doc_rows: Sequence[SparseRow], weight: float, vocab_size: int
) -> np.ndarray:
    """``(1 - w) * dense + w * cos_lexical`` with the lexical rows unsketched (exact cosines of
    their unit vectors): what the one vector's sketch approximates."""

    def unit_rows(rows: Sequence[SparseRow]) -> SparseVectors:
        normed = unit(rows)
        return SparseVectors(tuple(r[0] for r in normed), tuple(r[1] for r in normed), vocab_size)

    lexical = fusion.sparse_scores(unit_rows(query_rows), unit_rows(doc_rows)).astype(np.float64)
    return (1.0 - weight) * np.asarray(dense, np.float64) + weight * lexical
