"""Writing an evaluation out: a Markdown table, a JSON file and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.extras import require
from .results import MAIN_SCORE, Evaluation

_SCORE_NAMES = {"spearman": "Spearman", "ndcg_at_10": "nDCG@10", "accuracy": "accuracy"}


def _tasks(evaluation: Evaluation) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r.task, r.kind) for r in evaluation.results))


def _labels(evaluation: Evaluation) -> list[str]:
    return list(dict.fromkeys(r.label for r in evaluation.results))


def to_markdown(evaluation: Evaluation, title: str | None = None) -> str:
    """Methods as rows, tasks as columns (main score x100), then each task's other metrics and timings."""
    tasks, labels = _tasks(evaluation), _labels(evaluation)
    by_key = {(r.label, r.task): r for r in evaluation.results}
    lines = [f"## {title}", ""] if title else []
    header = ["method"] + [f"{task} ({_SCORE_NAMES[MAIN_SCORE[kind]]})" for task, kind in tasks]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in labels:
        cells = [f"{by_key[label, t].main_score:.2f}" if (label, t) in by_key else "-" for t, _ in tasks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    described = dict.fromkeys((r.label, r.description) for r in evaluation.results)
    lines += ["", "Methods as run:", ""] + [f"- `{label}`: {text}" for label, text in described]
    lines += ["", "All metrics (x100), texts embedded (0: all from the cache) and seconds:", ""]
    lines += ["| method | task | metrics | texts embedded | seconds |", "|---|---|---|---|---|"]
    for r in evaluation.results:
        metrics = ", ".join(f"{k} {v:.2f}" for k, v in r.metrics.items())
        lines.append(f"| {r.label} | {r.task} | {metrics} | {r.texts_embedded} | {r.seconds:.1f} |")
    env = evaluation.environment
    lines += ["", "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items() if v is not None), ""]
    return "\n".join(lines)


def write_json(evaluation: Evaluation, path: str | Path) -> None:
    Path(path).write_text(json.dumps(evaluation.to_dict(), indent=2) + "\n")


def plot(evaluation: Evaluation, path: str | Path, title: str | None = None) -> None:
    """Grouped bars: one group per task, one bar per method (needs matplotlib)."""
    require("plot", "the evaluation chart")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks, labels = _tasks(evaluation), _labels(evaluation)
    by_key = {(r.label, r.task): r.main_score for r in evaluation.results}
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tasks) * max(1, len(labels) / 3)), 4))
    for i, label in enumerate(labels):
        values = [by_key.get((label, t), np.nan) for t, _ in tasks]
        ax.bar(np.arange(len(tasks)) + (i - (len(labels) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(np.arange(len(tasks)), [f"{t}\n({_SCORE_NAMES[MAIN_SCORE[k]]})" for t, k in tasks])
    ax.set_ylabel("score x100")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", ncols=min(len(labels), 4), loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_report(evaluation: Evaluation, directory: str | Path, title: str | None = None) -> list[Path]:
    """Write ``results.md``, ``results.json`` and ``results.png`` into ``directory``; return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "results.md", directory / "results.json", directory / "results.png"]
    paths[0].write_text(to_markdown(evaluation, title))
    write_json(evaluation, paths[1])
    plot(evaluation, paths[2], title)
    return paths
