"""Re-routing overhead: time of method="kv" / time of method="prompt", same texts and batches.

Both embedders share one loaded model and see the same texts, truncated to exactly the given
prompt-included token length, so the only difference is the re-routing inside the selected layers.
Also timed: kv through the concatenation path (prefix row in keys/values, prefix column in the
mask), which CPU runs would take without the log-sum-exp merge. Shows which attention kernels run
(profiler op names per forward).

    python benchmarks/bench_overhead.py                                   # CPU, bundled SmolLM2, float32
    python benchmarks/bench_overhead.py --model random:qwen3-4b --dtype bfloat16 --device cuda
"""

from __future__ import annotations

import argparse
import collections
import functools
import warnings

import torch
from common import machine, markdown_table, rerouted_kernels, scifact_documents, side_by_side
from models import load_backbone

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.method.kernels import active_kernels, use_kernels

# Rows per batch at each length: about the same number of tokens per forward.
DEFAULT_ROWS = {128: 32, 512: 8, 2048: 2, 4096: 1}
KERNEL_OPS = ("attention", "softmax", "bmm", "baddbmm")


def texts_of_length(embedder: KVEmbedder, docs: list[str], rows: int) -> list[str]:
    """``rows`` different real texts, each longer than the embedder's max_length (so truncated to it)."""
    joined = " ".join(docs)
    step = len(joined) // rows
    texts = []
    for row in range(rows):
        text = (joined[row * step :] + " " + joined)[: embedder.max_length * 8]
        texts.append(text)
    return texts


def kernels(embedder: KVEmbedder, texts: list[str]) -> dict[str, int]:
    """Attention-related aten ops (name -> calls) in one ``encode`` of ``texts``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        embedder.encode(texts, batch_size=len(texts))
    counts: collections.Counter[str] = collections.Counter()
    for event in prof.events():
        if event.name.startswith("aten::") and any(op in event.name for op in KERNEL_OPS):
            counts[event.name] += 1
    return dict(sorted(counts.items()))


def concatenated(encode):
    """``encode`` run with the log-sum-exp merge switched off (the concatenation path)."""

    def run():
        with use_kernels(active_kernels().unfused()):
            return encode()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="bundled alias, path, or random:qwen3-4b")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_ROWS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", default=None, help="BEIR folder whose corpus.jsonl supplies the texts")
    parser.add_argument("--layers", default=None, help="re-routed layers, e.g. 10,11,12 (default: automatic)")
    parser.add_argument("--no-concat", action="store_true", help="skip timing the concatenation path")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory for random:<shape> (default: SmolLM2's)")
    parser.add_argument(
        "--tokens-per-pass", type=int, default=None, help="rows per batch: this over the length (default: about 4096)"
    )
    args = parser.parse_args()

    warnings.filterwarnings("ignore", message=".*were truncated")
    model, tokenizer, layers = load_backbone(
        args.model, getattr(torch, args.dtype), args.device, tokenizer=args.tokenizer
    )
    if args.layers:
        layers = [int(layer) for layer in args.layers.split(",")]
    docs = scifact_documents(*([args.data] if args.data else []), limit=400)
    print(f"machine: {machine()}")
    print(f"model: {args.model} ({args.dtype}, {args.device})")
    rows = []
    for length in args.lengths:
        # No post-processing: only the forward pass differs (and nothing is fitted first).
        kv = KVEmbedder(model, tokenizer, method="kv", layers=layers, max_length=length, postprocess="none")
        prompt = KVEmbedder(model, tokenizer, method="prompt", max_length=length, postprocess="none")
        per_pass = args.tokens_per_pass
        n = DEFAULT_ROWS.get(length, max(1, 4096 // length)) if per_pass is None else max(1, per_pass // length)
        texts = texts_of_length(kv, docs, n)
        widths = {len(e) for e in kv.tokenize(texts)}
        runs = {
            "kv": functools.partial(kv.encode, texts, batch_size=n),
            "prompt": functools.partial(prompt.encode, texts, batch_size=n),
        }
        if not args.no_concat:
            runs["concat"] = concatenated(runs["kv"])
        times = side_by_side(runs, repeats=args.repeats)
        used = rerouted_kernels(runs["kv"])
        ratio = times["kv"] / times["prompt"]
        concat = f"{times['concat'] / times['prompt']:.3f}" if "concat" in times else "-"
        kernel_names = ", ".join(f"{layer}: {kernel}" for layer, kernel in used.items())
        row = [
            length,
            n,
            sorted(widths),
            f"{times['prompt']:.4f}",
            f"{times['kv']:.4f}",
            f"{ratio:.3f}",
            concat,
            kernel_names,
        ]
        rows.append(row)
        print(f"length {length}: prompt {times['prompt']:.3f}s kv {times['kv']:.3f}s ratio {ratio:.3f}", flush=True)
    print(f"\nre-routed layers: {kv.layers} of {kv.num_layers}")
    header = [
        "tokens",
        "rows",
        "token counts",
        "prompt s",
        "kv s",
        "kv / prompt",
        "concat path / prompt",
        "kernel per re-routed layer",
    ]
    print(markdown_table(header, rows))
    small = texts_of_length(kv, docs, 2)
    print("\nattention ops per encode (2 rows):")
    print(markdown_table(["method", "ops"], [[m, kernels(e, small)] for m, e in (("prompt", prompt), ("kv", kv))]))


if __name__ == "__main__":
    main()
