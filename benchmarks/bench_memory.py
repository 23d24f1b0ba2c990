"""Peak activation memory against ``max_tokens_per_batch``.

Each budget runs in a fresh process: load the model, embed a few texts, then embed SciFact
documents under the budget; reports the peak memory above what was in use just before (on CPU:
resident memory sampled every millisecond, with glibc told to return large blocks to the system at
once; on CUDA: ``torch.cuda.max_memory_allocated``).

    python benchmarks/bench_memory.py --budgets 2048 8192 32768
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
import warnings

import torch
from common import machine, markdown_table, scifact_documents

from kv_embeddings_integrations import KVEmbedder

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class RSSPeak:
    """Highest resident memory seen by a 1 ms sampling thread while the block runs."""

    def __enter__(self) -> RSSPeak:
        self.peak, self._done = rss_bytes(), False
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._done = True
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def child(args) -> None:
    warnings.filterwarnings("ignore", message=".*were truncated")
    docs = scifact_documents(*([args.data] if args.data else []), limit=args.docs)
    embedder = KVEmbedder.from_pretrained(
        args.model,
        dtype=getattr(torch, args.dtype),
        device=args.device,
        max_length=args.max_length,
        max_tokens_per_batch=args.child,
        batch_size=None,
    )
    embedder.encode(docs[:2])
    shapes = []
    original = embedder.forward
    embedder.forward = lambda batch, **kw: shapes.append(tuple(batch.input_ids.shape)) or original(batch, **kw)
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        embedder.encode(docs)
        peak = torch.cuda.max_memory_allocated() - baseline
    else:
        baseline = rss_bytes()
        with RSSPeak() as rss:
            embedder.encode(docs)
        peak = rss.peak - baseline
    largest = max(rows * width for rows, width in shapes)
    print(json.dumps({"peak": peak, "largest": largest, "forwards": len(shapes)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--docs", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--budgets", type=int, nargs="+", default=[2048, 8192, 32768])
    parser.add_argument("--data", default=None)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(args)
    rows = []
    for budget in args.budgets:
        command = [sys.executable, __file__, *sys.argv[1:], "--child", str(budget)]
        # Large blocks straight from (and back to) the system, so freed activations leave the RSS.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        run = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        out = run.stdout.strip().splitlines()[-1]
        result = json.loads(out)
        mib = result["peak"] / 2**20
        rows.append([budget, result["largest"], result["forwards"], f"{mib:.0f}", f"{mib / budget * 1024:.1f}"])
        print(f"budget {budget}: peak +{mib:.0f} MiB", flush=True)
    print(f"\nmachine: {machine()}")
    print(f"model: {args.model} ({args.dtype}, {args.device}); {args.docs} SciFact docs, max_length {args.max_length}")
    header = [
        "max_tokens_per_batch",
        "largest batch (rows x width)",
        "forwards",
        "peak MiB",
        "MiB per 1k tokens of budget",
    ]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
