"""Coalescing of concurrent requests: 64 simultaneous ``aembed_query`` calls vs the same queries sent
one after another through ``embed_query`` (no coalescing; LangChain adapter, bundled model, real
SciFact queries).

    python benchmarks/bench_concurrency.py
"""

from __future__ import annotations

import argparse
import asyncio
import json

import numpy as np
import torch
from common import DEFAULT_SCIFACT, machine, markdown_table, side_by_side

from kv_embeddings_integrations import KVEmbeddings


def queries(path, n: int) -> list[str]:
    with open(f"{path}/queries.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line, _ in zip(f, range(n), strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default=str(DEFAULT_SCIFACT), help="BEIR folder with queries.jsonl")
    args = parser.parse_args()

    embeddings = KVEmbeddings(
        model=args.model, model_kwargs={"dtype": getattr(torch, args.dtype), "device": args.device}
    )
    texts = queries(args.data, args.requests)
    results: dict[str, list] = {}

    def sequential():
        # The baseline without coalescing: plain embed_query calls, one forward pass each.
        return [embeddings.embed_query(q) for q in texts]

    async def concurrent():
        return await asyncio.gather(*(embeddings.aembed_query(q) for q in texts))

    def run(name, coroutine):
        results[name] = asyncio.run(coroutine())

    times = side_by_side(
        {
            "one after another": lambda: results.__setitem__("seq", sequential()),
            "concurrent": lambda: run("con", concurrent),
        },
        repeats=args.repeats,
    )
    seq, con = np.array(results["seq"]), np.array(results["con"])
    sizes = embeddings.client._coalescer.batch_sizes
    before = len(sizes)
    run("con", concurrent)
    last_sizes = sizes[before:]
    print(f"machine: {machine()}")
    print(f"model: {args.model} ({args.dtype}); {len(texts)} SciFact queries as single-text requests")
    rows = [[name, f"{t:.3f}", f"{len(texts) / t:.1f}"] for name, t in times.items()]
    print(markdown_table(["requests", "seconds", "requests/s"], rows))
    print(f"\nthroughput ratio concurrent / one after another: {times['one after another'] / times['concurrent']:.2f}")
    print(f"texts per coalesced call in one more concurrent run: {last_sizes}")
    print(
        f"vectors, concurrent vs one after another: max |diff| {np.abs(con - seq).max():.2e}, "
        f"min cosine {(con * seq).sum(1).min():.8f}"
    )


if __name__ == "__main__":
    main()
