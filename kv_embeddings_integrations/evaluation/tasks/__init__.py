"""One evaluator per kind of task, each taking only what it needs and returning
[`Scores`][kv_embeddings_integrations.evaluation.results.Scores]:
[`sts`][kv_embeddings_integrations.evaluation.tasks.sts],
[`retrieval`][kv_embeddings_integrations.evaluation.tasks.retrieval] (with the ``--hybrid`` rows of
[`hybrid`][kv_embeddings_integrations.evaluation.tasks.hybrid] and the BM25 reference of
[`bm25`][kv_embeddings_integrations.evaluation.tasks.bm25]) and
[`classification`][kv_embeddings_integrations.evaluation.tasks.classification].
"""

from .bm25 import bm25_scores, evaluate_bm25
from .classification import evaluate_classification
from .retrieval import evaluate_retrieval, lexical_fusion_scores
from .sts import evaluate_sts

__all__ = [
    "bm25_scores",
    "evaluate_bm25",
    "evaluate_classification",
    "evaluate_retrieval",
    "evaluate_sts",
    "lexical_fusion_scores",
]
