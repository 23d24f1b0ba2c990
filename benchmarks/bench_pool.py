"""Data parallel: one process vs an EmbeddingPool of worker processes on the same documents.

On a CPU machine the workers split the cores (each gets cores / workers threads), so this shows
the pool's overhead and ordering, not a speed-up; with one GPU per worker it scales with GPUs.

    python benchmarks/bench_pool.py --devices cpu cpu
    python benchmarks/bench_pool.py --devices cuda:0 cuda:1 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from common import machine, markdown_table, scifact_documents, side_by_side

from kv_embeddings_integrations import KVEmbedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cpu"])
    parser.add_argument("--docs", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*were truncated")

    docs = scifact_documents(*([args.data] if args.data else []), limit=args.docs)
    single_device = args.devices[0]
    embedder = KVEmbedder.from_pretrained(
        args.model, dtype=getattr(torch, args.dtype), device="cpu", max_length=args.max_length
    )
    results = {}
    with embedder.start_pool(args.devices) as pool:
        embedder.model.to(single_device)

        def one():
            results["one"] = embedder.encode(docs)

        def many():
            results["pool"] = pool.encode(docs)

        times = side_by_side({"one process": one, f"pool of {len(args.devices)}": many}, repeats=args.repeats)
    print(f"machine: {machine()}")
    print(f"model: {args.model} ({args.dtype}); {len(docs)} SciFact documents, max_length {args.max_length}")
    base = times["one process"]
    rows = [[name, f"{t:.2f}", f"{len(docs) / t:.1f}", f"{base / t:.2f}"] for name, t in times.items()]
    print(markdown_table(["run", "seconds", "docs/s", "speed-up"], rows))
    diff = np.abs(results["one"] - results["pool"]).max()
    print(f"\npool vs one process: max |diff| {diff:.2e} (same order of rows)")


if __name__ == "__main__":
    main()
