"""What an evaluation produces: one row per method and task, the run's environment, the main scores."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from ..version import __version__

# The metric each kind of task is ranked by (the tables' and the chart's number).
MAIN_SCORE = {"sts": "spearman", "retrieval": "ndcg_at_10", "classification": "accuracy"}

# A further row an evaluator derives from the same pass: (label suffix, how it was scored, metrics).
Row = tuple[str, str, dict[str, float]]


class Scores(NamedTuple):
    """What a task's evaluator returns: the method's own metrics and its further rows."""

    metrics: dict[str, float]
    extra: list[Row]


@dataclass
class TaskResult:
    """One method on one task."""

    label: str
    description: str
    task: str
    kind: str
    metrics: dict[str, float]
    texts_embedded: int
    seconds: float

    @property
    def main_score(self) -> float:
        return self.metrics[MAIN_SCORE[self.kind]]


@dataclass
class Evaluation:
    """All results of a run, with what it ran on."""

    results: list[TaskResult] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        rows = [{**vars(r), "main_score": r.main_score} for r in self.results]
        return {"environment": self.environment, "results": rows}


def environment(**extra: Any) -> dict[str, Any]:
    """The machine and library versions, for the report."""
    import transformers

    info = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "kv_embeddings_integrations": __version__,
    }
    return {**info, **extra}
