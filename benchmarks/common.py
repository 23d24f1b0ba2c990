"""Shared pieces of the benchmarks: the machine, real texts, timing side by side."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCIFACT = ROOT.parent / "shared" / "evaldata" / "scifact-train"
sys.path.insert(0, str(ROOT))


def machine() -> str:
    """One line naming the hardware and software the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}", f"{torch.get_num_threads()} threads"]
    if torch.cuda.is_available():
        parts.append(", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
    import transformers

    parts.append(f"transformers {transformers.__version__}")
    return "; ".join(parts)


def scifact_documents(path: Path | str = DEFAULT_SCIFACT, limit: int | None = None) -> list[str]:
    """SciFact corpus documents as ``title + " " + text``, in file order."""
    corpus = Path(path) / "corpus.jsonl"
    if not corpus.exists():
        raise SystemExit(f"{corpus} not found; pass --data DIR with a BEIR corpus.jsonl")
    docs = []
    with corpus.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            docs.append(f"{row.get('title', '')} {row['text']}".strip())
            if limit is not None and len(docs) >= limit:
                break
    return docs


def rerouted_kernels(run: Callable[[], object]) -> dict[int, str]:
    """``{layer: kernel}`` of the re-routed layers in one call of ``run`` (rerouting's own record:
    "flash", "efficient", "cudnn", "cpu_flash" or "concat")."""
    from kv_embeddings_integrations.core.method import rerouting

    with rerouting.observe_plans() as plans:
        run()
    return {layer: kernel for plan in plans for layer, kernel in sorted(plan.kernels.items())}


def sync(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def side_by_side(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each callable, run interleaved (a, b, a, b, ...) so drift hits all alike."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    return {name: statistics.median(values) for name, values in times.items()}


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
