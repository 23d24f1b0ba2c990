"""Run methods over tasks: each (method, task) through its task kind's evaluator, embeddings cached.

The pieces live in their own modules: the encoders' Protocols
([`encoders`][kv_embeddings_integrations.evaluation.encoders]), the package's methods
([`kv_encoder`][kv_embeddings_integrations.evaluation.kv_encoder]), the reference rows
([`references`][kv_embeddings_integrations.evaluation.references]), one evaluator per kind of task
([`tasks`][kv_embeddings_integrations.evaluation.tasks]) and the results
([`results`][kv_embeddings_integrations.evaluation.results]); the names once defined here are
imported back below, so ``from kv_embeddings_integrations.evaluation.runner import ...`` keeps
working.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from ..core.cache import cache_dir
from .data import ClassificationTask, RetrievalTask, STSTask, Task
from .embeddings import Embeddings
from .encoders import Encoder
from .kv_encoder import KVVariant, kv_variants
from .references import REFERENCE_PACKAGES, BM25Reference, SentenceTransformerReference
from .results import MAIN_SCORE, Evaluation, Scores, TaskResult, environment
from .tasks import evaluate_bm25, evaluate_classification, evaluate_retrieval, evaluate_sts, lexical_fusion_scores
from .variants import FITS, parse_variants

# The old private name of Embeddings (docs/results/dev/lexical_sweep.py imports it from here).
_Embeddings = Embeddings

__all__ = [
    "FITS",
    "MAIN_SCORE",
    "REFERENCE_PACKAGES",
    "BM25Reference",
    "Encoder",
    "Evaluation",
    "KVVariant",
    "SentenceTransformerReference",
    "Task",
    "TaskResult",
    "environment",
    "evaluate_task",
    "evaluate_task_rows",
    "kv_variants",
    "lexical_fusion_scores",
    "parse_variants",
    "run_evaluation",
]


def evaluate_task(encoder: Encoder, task: Task, cache_directory: Path | None = None) -> TaskResult:
    """Embed a task's texts with ``encoder`` (through the cache) and score them."""
    return evaluate_task_rows(encoder, task, cache_directory)[0]


def evaluate_task_rows(
    encoder: Encoder | BM25Reference,
    task: Task,
    cache_directory: Path | None = None,
    *,
    hybrid: bool = False,
    bm25: dict[str, np.ndarray] | None = None,
    precisions: Sequence[str] = (),
) -> list[TaskResult]:
    """[`evaluate_task`][kv_embeddings_integrations.evaluation.runner.evaluate_task], and with
    ``hybrid`` on a retrieval task, more rows from the same pass: the encoder's sparse vectors
    alone, dense + sparse (min-max and reciprocal-rank fusion) and dense + BM25 (min-max). ``bm25``
    caches BM25 score matrices by task name across encoders. ``precisions`` adds, for KV methods on
    STS and retrieval tasks, a row per output precision of the same final vectors
    ([`precision`][kv_embeddings_integrations.evaluation.precision])."""
    start = time.perf_counter()
    if isinstance(encoder, BM25Reference):
        # BM25 scores texts, not vectors: a row of retrieval tasks only.
        if not isinstance(task, RetrievalTask):
            return []
        metrics = evaluate_bm25(task, bm25)
        seconds = time.perf_counter() - start
        return [TaskResult(encoder.label, encoder.description, task.name, task.kind, metrics, 0, seconds)]
    embed = Embeddings(encoder, cache_directory)
    scores: Scores
    match task:
        case STSTask():
            scores = evaluate_sts(embed, task, precisions)
        case RetrievalTask():
            scores = evaluate_retrieval(embed, task, hybrid=hybrid, bm25=bm25, precisions=precisions)
        case ClassificationTask():
            scores = evaluate_classification(embed, task)
        case _:
            raise TypeError(f"unknown task type {type(task).__name__}")
    seconds = time.perf_counter() - start
    rows = [
        TaskResult(encoder.label, encoder.description, task.name, task.kind, scores.metrics, embed.embedded, seconds)
    ]
    for name, how, extra_metrics in scores.extra:
        rows.append(
            TaskResult(
                f"{encoder.label} [{name}]", f"{encoder.label}: {how}", task.name, task.kind, extra_metrics, 0, 0.0
            )
        )
    return rows


def run_evaluation(
    encoders: Sequence[Encoder | BM25Reference],
    tasks: Sequence[Task],
    *,
    cache_directory: str | Path | None = "default",
    log: TextIO | None = sys.stderr,
    hybrid: bool = False,
    precisions: Sequence[str] = (),
) -> Evaluation:
    """Every encoder on every task, in order; embeddings cached under ``cache_directory``.

    Args:
        encoders: what to evaluate (see [`kv_variants`][kv_embeddings_integrations.evaluation.kv_encoder.kv_variants],
            [`SentenceTransformerReference`][kv_embeddings_integrations.evaluation.references.SentenceTransformerReference],
            [`BM25Reference`][kv_embeddings_integrations.evaluation.references.BM25Reference]).
        tasks: loaded tasks (see [`data`][kv_embeddings_integrations.evaluation.data]).
        cache_directory: embedding cache folder; ``"default"`` is ``<user cache>/embeddings``,
            ``None`` disables caching.
        log: where one line per finished (encoder, task) goes (``None``: silent).
        hybrid: on retrieval tasks, also score each KV method's sparse vectors (same pass), and its
            dense scores fused with them and with BM25
            ([`evaluate_task_rows`][kv_embeddings_integrations.evaluation.runner.evaluate_task_rows]).
        precisions: output precisions (``int8``, ``binary``, ...) to score each KV method's final
            vectors in too, on STS and retrieval tasks
            ([`precision`][kv_embeddings_integrations.evaluation.precision]).
    """
    if cache_directory == "default":
        cache_directory = cache_dir() / "embeddings"
    directory = Path(cache_directory) if cache_directory is not None else None
    evaluation = Evaluation(environment=environment())
    bm25: dict[str, np.ndarray] = {}
    done, total = 0, len(encoders) * len(tasks)
    for encoder in encoders:
        for task in tasks:
            done += 1
            for result in evaluate_task_rows(encoder, task, directory, hybrid=hybrid, bm25=bm25, precisions=precisions):
                evaluation.results.append(result)
                if log is not None:
                    print(
                        f"[{done}/{total}] {result.label} on {task.name}: "
                        f"{MAIN_SCORE[task.kind]} {result.main_score:.2f} "
                        f"({result.texts_embedded} texts embedded, {result.seconds:.1f} s)",
                        file=log,
                        flush=True,
                    )
    return evaluation
