"""Peak activation memory against ``max_tokens_per_batch``.

Each budget runs in a fresh process: load the model, embed a few texts (baseline), then embed
SciFact documents under the budget; reports the peak memory above the baseline (process peak RSS
on CPU; ``torch.cuda.max_memory_allocated`` on CUDA).

    python benchmarks/bench_memory.py --budgets 2048 8192 32768
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import warnings

import torch
from common import machine, markdown_table, scifact_documents

from kv_embeddings_integrations import KVEmbedder


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


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
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() if args.device.startswith("cuda") else peak_bytes(args.device)
    shapes = []
    original = embedder._embed_batch
    embedder._embed_batch = lambda batch: shapes.append(tuple(batch.input_ids.shape)) or original(batch)
    embedder.encode(docs)
    largest = max(rows * width for rows, width in shapes)
    print(json.dumps({"peak": peak_bytes(args.device) - baseline, "largest": largest, "forwards": len(shapes)}))


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
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        result = json.loads(out)
        mib = result["peak"] / 2**20
        rows.append([budget, result["largest"], result["forwards"], f"{mib:.0f}", f"{mib / budget * 1024:.1f}"])
        print(f"budget {budget}: peak +{mib:.0f} MiB", flush=True)
    print(f"\nmachine: {machine()}")
    print(f"model: {args.model} ({args.dtype}, {args.device}); {args.docs} SciFact docs, max_length {args.max_length}")
    header = ["max_tokens_per_batch", "largest batch (rows x width)", "forwards", "peak MiB", "MiB per 1k tokens"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
