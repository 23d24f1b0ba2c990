"""Print the dev-sweep tables of docs/results.md from the results.json files in this folder.

python docs/results/dev/summarize.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
MODELS = {"smollm2-135m": "SmolLM2-135M", "gemma3-270m": "Gemma-3-270m"}
REFERENCE = "all-MiniLM-L6-v2 (reference)"


def short(task: str) -> str:
    return task.split(" (")[0]


def load(model: str, run: str) -> dict[tuple[str, str], float]:
    path = HERE / f"{model}-{run}" / "results.json"
    if not path.exists():
        return {}
    return {(r["label"], short(r["task"])): r["main_score"] for r in json.loads(path.read_text())["results"]}


def families_table(model: str) -> dict[str, float]:
    scores = load(model, "families")
    scifact = load(model, "scifact")
    tasks = list(dict.fromkeys(t for _, t in scores))
    if not tasks:
        return {}
    has_scifact = bool(scifact)
    labels = list(dict.fromkeys(label for label, _ in scores))
    head = [*tasks, *(["scifact-train"] if has_scifact else []), f"mean of {len(tasks)}"]
    print(f"{MODELS[model]}:\n")
    print("| method | " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(head))
    means = {}
    for label in labels:
        row = [scores.get((label, t)) for t in tasks]
        mean = sum(row) / len(row) if None not in row else None
        if mean is not None:
            means[label] = mean
        cells = [f"{v:.2f}" if v is not None else "-" for v in row]
        if has_scifact:
            value = scifact.get((label, "scifact-train"))
            cells.append(f"{value:.2f}" if value is not None else "-")
        cells.append(f"**{mean:.2f}**" if mean is not None else "-")
        print(f"| `{label}` | " + " | ".join(cells) + " |")
    print()
    return means


if __name__ == "__main__":
    print("### Dev sweep: every family, with and without re-routing and centering (main scores x100)\n")
    per_model = {model: families_table(model) for model in MODELS}
    both = [label for label in per_model["smollm2-135m"] if all(label in m for m in per_model.values())]
    if both:
        print("### Mean over the dev tasks, both models\n")
        print("| method | " + " | ".join(MODELS.values()) + " | mean | re-routes |")
        print("|---|" + "---:|" * (len(MODELS) + 1) + "---|")
        ranked = sorted(both, key=lambda label: -sum(per_model[m][label] for m in MODELS))
        for label in ranked:
            values = [per_model[m][label] for m in MODELS]
            routed = "yes" if label.startswith("kv") else ""
            cells = " | ".join(f"{v:.2f}" for v in values)
            print(f"| `{label}` | {cells} | {sum(values) / len(values):.2f} | {routed} |")
        print()
