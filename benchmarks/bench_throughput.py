"""Throughput of kv against the alternatives on one backbone, and padding efficiency.

Same backbone, same documents (SciFact corpus, mixed lengths): kv; prompt (no re-routing);
echo (the text twice); sentence-transformers encoding the raw texts with last-token pooling at its
default batch size (32). Padding efficiency is real tokens / tokens processed (rows x padded width)
over all forward passes, counted at the model's input for every system. Tokens/s counts real
tokens (prompt included); model FLOP utilisation is 2 x non-embedding parameters x real tokens /
time / ``--peak-tflops`` (attention's own FLOPs not counted).

    python benchmarks/bench_throughput.py --docs 256            # CPU, bundled SmolLM2, float32
    python benchmarks/bench_throughput.py --model random:qwen3-4b --dtype bfloat16 --device cuda \
        --docs 2000 --max-tokens-per-batch 65536 --peak-tflops 790 --no-sentence-transformers
"""

from __future__ import annotations

import argparse
import warnings

import torch
from common import machine, markdown_table, scifact_documents, side_by_side
from models import load_backbone, non_embedding_parameters

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.model.bundled import BUNDLED_MODELS, bundled_model_dir


class TokenCounter:
    """Counts real and processed tokens of every forward of a module (through its attention mask)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.real = self.processed = 0
        self.enabled = True
        module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None and args and hasattr(args[0], "get"):  # a sentence-transformers module's features
            mask = args[0].get("attention_mask")
        if self.enabled and mask is not None and mask.dim() == 2:
            self.real += int(mask.sum())
            self.processed += mask.numel()
        elif self.enabled and mask is None and kwargs.get("input_ids") is not None:
            # A packed pass has no mask: its real tokens are the padded run's (same texts).
            self.processed += kwargs["input_ids"].numel()

    def efficiency(self) -> float:
        return self.real / max(self.processed, 1)


def sentence_transformer(path: str, max_seq_length: int, device: str, dtype: torch.dtype):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    word = Transformer(path, max_seq_length=max_seq_length, model_kwargs={"dtype": dtype})
    tokenizer = word.tokenizer if hasattr(word, "tokenizer") else word.processor
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    pooling = Pooling(word.get_embedding_dimension(), pooling_mode="lasttoken")
    return SentenceTransformer(modules=[word, pooling], device=device)


def corpus_efficiency(embedder: KVEmbedder, docs: list[str], max_tokens: int) -> dict[str, float]:
    """Padding efficiency of each batching over a whole corpus, from token counts alone (no forward):
    ours (token counts, longest first, 32 rows) and sentence-transformers' (character counts,
    longest first, 32 rows, raw texts)."""
    from kv_embeddings_integrations.core.running.batching import plan_batches

    def efficiency(lengths: list[int], batches: list[list[int]]) -> float:
        processed = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        return sum(lengths) / processed

    ours = [len(e) for e in embedder.tokenize(docs)]
    raw = [min(len(ids), max_tokens) for ids in embedder.tokenizer(docs)["input_ids"]]
    by_chars = sorted(range(len(docs)), key=lambda i: -len(docs[i]))
    st_batches = [by_chars[i : i + 32] for i in range(0, len(docs), 32)]
    return {
        "kv (this package)": efficiency(ours, plan_batches(ours, 32, None)),
        "sentence-transformers": efficiency(raw, st_batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="bundled alias or local directory")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--docs", type=int, default=256, help="first N SciFact documents")
    parser.add_argument("--max-tokens", type=int, default=512, help="text tokens kept per document")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", default=None, help="BEIR folder with corpus.jsonl (default: SciFact)")
    parser.add_argument("--no-sentence-transformers", action="store_true")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory for random:<shape>")
    parser.add_argument("--max-tokens-per-batch", type=int, default=None, help="padded tokens per forward")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak, for utilisation")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*were truncated")

    dtype = getattr(torch, args.dtype)
    docs = scifact_documents(*([args.data] if args.data else []), limit=args.docs)
    # Room for the text at --max-tokens plus the prompt (twice the text for echo).
    prompt_room = 32
    # No post-processing: the forward passes are what is timed (and nothing is fitted first).
    options = dict(postprocess="none", max_tokens_per_batch=args.max_tokens_per_batch)
    length = args.max_tokens + prompt_room
    if args.model.startswith("random:"):
        path = None
        model, tokenizer, layers = load_backbone(args.model, dtype, args.device, tokenizer=args.tokenizer)
        kv = KVEmbedder(model, tokenizer, method="kv", layers=layers, max_length=length, **options)
    else:
        path = str(bundled_model_dir(args.model)) if args.model in BUNDLED_MODELS else args.model
        kv = KVEmbedder.from_pretrained(
            args.model, dtype=dtype, device=args.device, method="kv", max_length=length, **options
        )
    systems = {
        "kv": kv,
        "kv (packed)": KVEmbedder(kv.model, kv.tokenizer, kv.config, name=kv.name, batching="packed", layers=kv.layers),
        "prompt": KVEmbedder(kv.model, kv.tokenizer, method="prompt", max_length=length, **options),
        "prompt (packed)": KVEmbedder(
            kv.model, kv.tokenizer, method="prompt", max_length=length, batching="packed", **options
        ),
        "echo": KVEmbedder(
            kv.model, kv.tokenizer, method="echo", max_length=2 * args.max_tokens + prompt_room, **options
        ),
    }
    counter = TokenCounter(kv.decoder)
    runs = {name: (lambda e=e: e.encode(docs)) for name, e in systems.items()}
    st_counter = None
    if path is not None and not args.no_sentence_transformers:
        st = sentence_transformer(path, args.max_tokens, args.device, dtype)
        st_counter = TokenCounter(st[0])
        runs["sentence-transformers (last token, batch 32)"] = lambda: st.encode(docs, batch_size=32)

    efficiency, real_tokens = {}, {}
    for name, fn in runs.items():  # one counted pass each (also the warm-up)
        counter.real = counter.processed = 0
        if st_counter is not None:
            st_counter.real = st_counter.processed = 0
        fn()
        counted = st_counter if name.startswith("sentence") else counter
        if name.endswith("(packed)"):
            counted.real = real_tokens["kv"]
        efficiency[name], real_tokens[name] = counted.efficiency(), counted.real
        print(f"{name}: {counted.real} real tokens, padding efficiency {efficiency[name]:.3f}", flush=True)
    counter.enabled = False
    times = side_by_side(runs, repeats=args.repeats, warmup=0)

    print(f"\nmachine: {machine()}")
    print(
        f"model: {args.model} ({args.dtype}, {args.device}); "
        f"{len(docs)} SciFact documents, text cut at {args.max_tokens} tokens"
    )
    parameters = non_embedding_parameters(kv.model)
    rows = []
    for name, t in times.items():
        utilisation = "-"
        if args.peak_tflops:
            utilisation = f"{2 * parameters * real_tokens[name] / t / (args.peak_tflops * 1e12):.1%}"
        rows.append(
            [
                name,
                f"{t:.3f}",
                f"{len(docs) / t:.1f}",
                f"{real_tokens[name] / t:,.0f}",
                utilisation,
                f"{t / times['kv']:.2f}",
                f"{efficiency[name]:.3f}",
            ]
        )
    print(
        f"non-embedding parameters: {parameters / 1e9:.2f} B; batching: {args.max_tokens_per_batch or 'batch_size 32'}"
    )
    header = ["system", "seconds", "docs/s", "real tokens/s", "model FLOP utilisation", "time / kv time"]
    print(markdown_table([*header, "padding efficiency"], rows))
    corpus = scifact_documents(*([args.data] if args.data else []))
    whole = corpus_efficiency(kv, corpus, args.max_tokens)
    print(f"\npadding efficiency over all {len(corpus)} documents (batches of 32, planning only):")
    print(markdown_table(["batching", "real / processed tokens"], [[k, f"{v:.3f}"] for k, v in whole.items()]))


if __name__ == "__main__":
    main()
