"""Print the dev-sweep tables of docs/results.md from the results.json files in this folder.

python docs/results/dev/summarize.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
MODELS = {"smollm2-135m": "SmolLM2-135M", "gemma3-270m": "Gemma-3-270m"}
TASKS = ["sts-dev", "sickr", "banking77"]
STS = ["sts-dev", "sickr"]


def load(model: str, run: str) -> dict[tuple[str, str], float]:
    path = HERE / f"{model}-{run}" / "results.json"
    if not path.exists():
        return {}
    results = json.loads(path.read_text())["results"]
    # "m(postprocess=none)" and "m" (runs made while no post-processing was the default) are one row.
    return {(r["label"].replace("(postprocess=none)", ""), r["task"].split(" (")[0]): r["main_score"] for r in results}


def mean(values: list[float | None]) -> float | None:
    return None if None in values else sum(values) / len(values)


def cell(value: float | None, bold: bool = False) -> str:
    if value is None:
        return "-"
    return f"**{value:.2f}**" if bold else f"{value:.2f}"


def model_table(model: str, runs: list[str]) -> dict[str, dict[str, float | None]]:
    scores: dict[tuple[str, str], float] = {}
    for run in runs:
        scores.update(load(model, run))
    labels = list(dict.fromkeys(label for label, _ in scores))
    if not labels:
        return {}
    print(f"{MODELS[model]}:\n")
    print("| method | STS-B dev | SICK-R | Banking77 | mean of STS | mean of 3 |")
    print("|---|---:|---:|---:|---:|---:|")
    out = {}
    for label in labels:
        row = [scores.get((label, t)) for t in TASKS]
        sts, all3 = mean(row[:2]), mean(row)
        out[label] = {"sts": sts, "all": all3}
        print(f"| `{label}` | " + " | ".join([*map(cell, row), cell(sts), cell(all3, True)]) + " |")
    print()
    return out


def cross_table(per_model: dict[str, dict], key: str, title: str) -> None:
    both = [
        label
        for label in per_model["smollm2-135m"]
        if all(m.get(label, {}).get(key) is not None for m in per_model.values())
    ]
    if not both:
        return
    print(f"### {title}\n")
    print("| method | " + " | ".join(MODELS.values()) + " | mean | re-routes |")
    print("|---|" + "---:|" * (len(MODELS) + 1) + "---|")
    for label in sorted(both, key=lambda label: -sum(per_model[m][label][key] for m in MODELS)):
        values = [per_model[m][label][key] for m in MODELS]
        routed = "yes" if label.startswith("kv") else ""
        print(f"| `{label}` | " + " | ".join(f"{v:.2f}" for v in values) + f" | {sum(values) / 2:.2f} | {routed} |")
    print()


def four_tasks(per_model: dict[str, dict], scifact: dict[str, dict]) -> None:
    """The dev average the default is chosen on: STS-B dev, SICK-R, Banking77, SciFact; centered."""
    rows: dict[str, dict[str, float | None]] = {}
    for model in MODELS:
        for label, values in per_model[model].items():
            if not label.endswith("(postprocess=center)"):
                continue
            retrieval = scifact[model].get((label, "scifact-train"))
            all3 = values["all"]
            rows.setdefault(label, {})[model] = None if None in (all3, retrieval) else (3 * all3 + retrieval) / 4
    print("### Mean of the four dev tasks (STS-B dev, SICK-R, Banking77, SciFact subset), centered\n")
    print("| method | " + " | ".join(MODELS.values()) + " | mean | re-routes |")
    print("|---|" + "---:|" * (len(MODELS) + 1) + "---|")

    def order(label: str) -> float:
        values = [rows[label].get(m) for m in MODELS]
        return -sum(values) if None not in values else float("inf")

    for label in sorted(rows, key=order):
        values = [rows[label].get(m) for m in MODELS]
        both = cell(mean(values)) if None not in values else "-"
        routed = "yes" if label.startswith("kv") else ""
        name = label.replace("(postprocess=center)", "")
        print(f"| `{name}` | " + " | ".join(cell(v) for v in values) + f" | {both} | {routed} |")
    print()


ROLES = [
    "automatic layers, bias 1",
    "bias 0",
    "bias 2",
    "bias 4",
    "no re-routing (same prompt)",
    "early window",
    "middle window",
    "late window",
]


def rerouting_sweep() -> None:
    """sweep.sh rerouting: rows by role (the layer windows differ per model), both models, both tasks."""
    for family, suffix in (("kv", ""), ("kv_pcot", "-pcot")):
        runs = {m: (load(m, f"rerouting{suffix}-scifact"), load(m, f"rerouting{suffix}-sts")) for m in MODELS}
        if not any(a or b for a, b in runs.values()):
            continue
        print(f"### Re-routing sweep, `{family}` (SciFact judged documents nDCG@10 / STS-B dev 500 pairs Spearman)\n")
        print("| configuration | " + " | ".join(f"{n} SciFact | {n} STS-B" for n in MODELS.values()) + " |")
        print("|---|" + "---:|" * (2 * len(MODELS)))
        labels = {m: list(dict.fromkeys(label for label, _ in scifact)) for m, (scifact, _) in runs.items()}
        for i, role in enumerate(ROLES):
            cells = []
            for m, (scifact, sts) in runs.items():
                label = labels[m][i] if i < len(labels[m]) else None
                cells += [cell(scifact.get((label, "scifact-train"))), cell(sts.get((label, "sts-dev")))]
            names = {MODELS[m]: labels[m][i] for m in MODELS if i < len(labels[m])}
            if len(set(names.values())) == 1:
                what = f"`{next(iter(names.values()))}`"
            else:  # the windows differ per model: say each
                what = "; ".join(f"{n}: layers {label.split('layers=')[-1].rstrip(')')}" for n, label in names.items())
            print(f"| {role} ({what}) | " + " | ".join(cells) + " |")
        print()


def lengths() -> None:
    """sweep.sh lengths: the retrieval default's rows at 256 / 512 / 4096 tokens, both models."""
    runs = {m: load(m, "lengths") for m in MODELS}
    if not any(runs.values()):
        return
    print("### SciFact judged documents (565) by input length, `kv` centered, nDCG@10\n")
    print("| system | " + " | ".join(f"{n} {t}" for n in MODELS.values() for t in (256, 512, "4096 (full)")) + " |")
    print("|---|" + "---:|" * (3 * len(MODELS)))
    rows = ["", " [sparse]", " [sparse IDF]", " [dense+sparse IDF]", " [dense+BM25]"]
    for row in rows:
        cells = []
        for scores in runs.values():
            for n in (256, 512, 4096):
                cells.append(cell(scores.get((f"kv(postprocess=center;max_length={n}){row}", "scifact-train"))))
        print(f"| {row.strip(' []') or 'dense'} | " + " | ".join(cells) + " |")
    print(
        "| BM25 | "
        + " | ".join(cell(s.get(("BM25 (reference)", "scifact-train"))) for s in runs.values() for _ in range(3))
        + " |"
    )
    print()


def selection_probe() -> None:
    """Could a train split choose the family per model? (sweep.sh selection)"""
    scores = {model: load(model, "selection") for model in MODELS}
    labels = list(dict.fromkeys(label for model in MODELS for label, _ in scores[model]))
    if not labels:
        return
    print("### Family selection probe: STS-B train, images genre (1000 pairs), Spearman x100\n")
    print("| method | " + " | ".join(MODELS.values()) + " |")
    print("|---|" + "---:|" * len(MODELS))
    for label in labels:
        cells = [cell(next((v for (lab, _), v in scores[m].items() if lab == label), None)) for m in MODELS]
        print(f"| `{label.replace('(postprocess=center)', '')}` | " + " | ".join(cells) + " |")
    print()


if __name__ == "__main__":
    print("### Every family, with and without re-routing and centering (main scores x100)\n")
    per_model = {model: model_table(model, ["families", "finalists", "metaeol"]) for model in MODELS}
    cross_table(per_model, "sts", "Mean of the two STS tasks, both models")
    cross_table(per_model, "all", "Mean of all three tasks, both models")
    print("### SciFact train queries, 1000-document corpus (every judged document kept), nDCG@10 x100\n")
    print("| method | " + " | ".join(f"{name}, none | {name}, centered" for name in MODELS.values()) + " |")
    print("|---|" + "---:|" * (2 * len(MODELS)) + "")
    scifact = {model: load(model, "scifact") for model in MODELS}
    methods = dict.fromkeys(
        label.replace("(postprocess=center)", "") for scores in scifact.values() for label, _ in scores
    )
    for method in methods:
        cells = []
        for model in MODELS:
            for label in (method, f"{method}(postprocess=center)"):
                cells.append(cell(scifact[model].get((label, "scifact-train"))))
        print(f"| `{method}` | " + " | ".join(cells) + " |")
    print()
    four_tasks(per_model, scifact)
    selection_probe()
    rerouting_sweep()
    lengths()
    dims = {model: load(model, "dims") for model in MODELS}
    for model, scores in dims.items():
        labels = list(dict.fromkeys(label for label, _ in scores))
        if labels:
            print(f"### Dimensions after post-processing, {MODELS[model]}\n")
            print("| method | STS-B dev | SICK-R | Banking77 | mean of 3 |")
            print("|---|---:|---:|---:|---:|")
            for label in labels:
                row = [scores.get((label, t)) for t in TASKS]
                print(f"| `{label}` | " + " | ".join([*map(cell, row), cell(mean(row), True)]) + " |")
            print()
