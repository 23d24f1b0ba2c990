"""Coalescing of concurrent requests: 64 simultaneous ``aembed_query`` calls vs the same queries sent
one after another through ``embed_query`` (no coalescing; LangChain adapter, bundled model, real
SciFact queries). ``--api core`` sends them to ``KVEmbedder.aencode`` / ``encode`` directly (no
framework needed; random weights in a real shape with ``--model random:<shape>``).

    python benchmarks/bench_concurrency.py
    python benchmarks/bench_concurrency.py --api core --model random:qwen3-4b --dtype bfloat16 --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import json

import numpy as np
import torch
from common import DEFAULT_SCIFACT, machine, markdown_table, side_by_side
from models import load_backbone

from kv_embeddings_integrations import KVEmbedder


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
    parser.add_argument("--api", choices=["langchain", "core"], default="langchain")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory for random:<shape>")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    if args.api == "langchain":
        from kv_embeddings_integrations import KVEmbeddings

        embeddings = KVEmbeddings(model=args.model, model_kwargs={"dtype": dtype, "device": args.device})
        embed_one, aembed_one, embedder = embeddings.embed_query, embeddings.aembed_query, embeddings.client
    else:
        if args.model.startswith("random:"):
            model, tokenizer, layers = load_backbone(args.model, dtype, args.device, tokenizer=args.tokenizer)
            embedder = KVEmbedder(model, tokenizer, method="kv", layers=layers, postprocess="none")
        else:
            embedder = KVEmbedder.from_pretrained(args.model, dtype=dtype, device=args.device, method="kv")

        def embed_one(text):
            return embedder.encode([text], prompt_type="query")[0]

        async def aembed_one(text):
            return (await embedder.aencode([text], prompt_type="query"))[0]

    texts = queries(args.data, args.requests)
    results: dict[str, list] = {}

    def sequential():
        # The baseline without coalescing: plain calls, one forward pass each.
        return [embed_one(q) for q in texts]

    async def concurrent():
        return await asyncio.gather(*(aembed_one(q) for q in texts))

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
    sizes = embedder.requests.batch_sizes
    before = len(sizes)
    run("con", concurrent)
    last_sizes = sizes[before:]
    print(f"machine: {machine()}")
    print(
        f"model: {args.model} ({args.dtype}, {args.device}, {args.api} API); "
        f"{len(texts)} SciFact queries as single-text requests"
    )
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
