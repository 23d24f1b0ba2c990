"""Print the combined tables of docs/results.md from the results.json files next to this script.

python docs/results/summarize.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
MODELS = {"smollm2-135m": "SmolLM2-135M", "gemma3-270m": "Gemma-3-270m"}
TASKS = {"sts-test": "STS-B test", "sickr": "SICK-R", "scifact-train": "SciFact", "banking77": "Banking77"}


def load(run: str) -> dict[tuple[str, str], dict]:
    path = HERE / run / "results.json"
    if not path.exists():
        return {}
    return {(r["label"], r["task"]): r for r in json.loads(path.read_text())["results"]}


def table(model: str, suffixes: list[str], tasks: list[str]) -> None:
    rows: dict[tuple[str, str], dict] = {}
    for suffix in suffixes:
        rows.update(load(model + suffix))
    labels = list(dict.fromkeys(label for label, _ in rows))
    if not labels:
        return
    print(f"{MODELS[model]}:\n")
    print("| method | " + " | ".join(TASKS[t] for t in tasks) + " |")
    print("|---|" + "---:|" * len(tasks))
    for label in labels:
        cells = [f"{rows[label, t]['main_score']:.2f}" if (label, t) in rows else "-" for t in tasks]
        print(f"| `{label}` | " + " | ".join(cells) + " |")
    print()


if __name__ == "__main__":
    for title, suffixes, tasks in [
        ("Every method (main scores x100)", ["", "-scifact"], ["sts-test", "sickr", "scifact-train", "banking77"]),
        ("kv ablation (Spearman x100)", ["-ablation"], ["sts-test", "sickr"]),
        ("float32 (Spearman x100)", ["-float32"], ["sts-test"]),
    ]:
        print(f"### {title}\n")
        for model in MODELS:
            table(model, suffixes, tasks)
