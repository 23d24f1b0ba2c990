"""Evaluation harness: standard data loaders, MTEB's metrics, a cached multi-method runner, reports.

Needs the ``eval`` extra (scipy, scikit-learn, pytrec-eval-terrier, matplotlib, sentence-transformers).
"""

from .cache import EmbeddingCache, cached_encode
from .data import (
    ClassificationTask,
    DataFormatError,
    RetrievalTask,
    STSTask,
    load_classification,
    load_retrieval,
    load_sts,
    subsample,
)
from .kv_encoder import kv_variants
from .metrics import classification_accuracy, exact_search, mrr_at_k, retrieval_scores, sts_spearman, undersample
from .references import BM25Reference, SentenceTransformerReference
from .report import plot, to_markdown, write_json, write_report
from .results import Evaluation, TaskResult
from .runner import evaluate_task, evaluate_task_rows, run_evaluation
from .variants import parse_variants

__all__ = [
    "BM25Reference",
    "ClassificationTask",
    "DataFormatError",
    "EmbeddingCache",
    "Evaluation",
    "RetrievalTask",
    "STSTask",
    "SentenceTransformerReference",
    "TaskResult",
    "cached_encode",
    "classification_accuracy",
    "evaluate_task",
    "evaluate_task_rows",
    "exact_search",
    "kv_variants",
    "load_classification",
    "load_retrieval",
    "load_sts",
    "mrr_at_k",
    "parse_variants",
    "plot",
    "retrieval_scores",
    "run_evaluation",
    "sts_spearman",
    "subsample",
    "to_markdown",
    "undersample",
    "write_json",
    "write_report",
]
