"""Test helpers, importable by any test: a byte-level BPE tokenizer trained in-process, tiny random
decoders of each covered family, their texts, and small async utilities. Fixtures live in conftest.py."""

from __future__ import annotations

import asyncio
import atexit
import functools
import shutil
import tempfile

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

VOCAB_SIZE = 320

CORPUS = [
    "A man is playing a guitar on the stage.",
    "Someone plays the guitar while people listen.",
    "The stock market fell sharply today after the announcement.",
    "Compress the Context in one word: Query Context sentence means",
    "Rewrite the sentence: rewritten sentence: This sentence means in one word",
    "Proteins fold into shapes determined by their amino acid sequence.",
    "How do I reset my card PIN at an ATM?",
    "A cat sleeps on the warm windowsill in the afternoon sun.",
]

TEXTS = [
    "A man is playing a guitar.",
    "Someone plays the guitar while people listen to the music in the park.",
    "Stocks fell.",
    "Proteins fold into shapes determined by their amino acid sequence, which the cell reads.",
    "a",
]


def make_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - 2,
        special_tokens=["<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>")


# Texts holding this marker fail to tokenize under RejectingTokenizer (a fault to inject).
REJECTED = "<<reject me>>"


class RejectingTokenizer(PreTrainedTokenizerFast):
    """A tokenizer that raises on texts holding ``REJECTED``: a failure inside pool workers,
    which receive their tokenizer pickled (so this class must live in an importable module)."""

    def __call__(self, text, *args, **kwargs):
        for item in [text] if isinstance(text, str) else text:
            if REJECTED in item:
                raise TypeError(f"cannot tokenize a text holding {REJECTED!r}")
        return super().__call__(text, *args, **kwargs)


def make_rejecting_tokenizer() -> RejectingTokenizer:
    return RejectingTokenizer(tokenizer_object=make_tokenizer().backend_tokenizer, bos_token="<bos>", eos_token="<eos>")


_COMMON = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)


def _gemma_common(**extra):
    # Small windows so the sliding-window layers really cut context in tests.
    return dict(_COMMON, head_dim=16, sliding_window=6, query_pre_attn_scalar=16, **extra)


# family -> (config class, model class, config kwargs, attn implementation)
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, dict(_COMMON), "sdpa"),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(_COMMON), "sdpa"),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(_COMMON, head_dim=16), "sdpa"),
    "mistral": (MistralConfig, MistralForCausalLM, dict(_COMMON, sliding_window=7), "sdpa"),
    # Gemma 2: soft-capping, so transformers runs it eagerly; alternating sliding/full layers.
    "gemma2": (Gemma2Config, Gemma2ForCausalLM, _gemma_common(attn_logit_softcapping=5.0), "eager"),
    "gemma3": (
        Gemma3TextConfig,
        Gemma3ForCausalLM,
        _gemma_common(layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"]),
        "sdpa",
    ),
}


def make_model(family: str, attn_implementation: str | None = None, seed: int = 0, **config_changes):
    config_cls, model_cls, kwargs, default_attn = FAMILIES[family]
    config = config_cls(**{**kwargs, **config_changes})
    config._attn_implementation = attn_implementation or default_attn
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    # Random init is tiny; scale weights up so attention patterns (and the prefix) matter.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "embed" not in name:
                param.mul_(8.0)
    return model


@functools.cache
def tiny_model_dir() -> str:
    """A tiny Llama and its tokenizer saved as a local model directory (once per session)."""
    path = tempfile.mkdtemp(prefix="tiny-llama-")
    atexit.register(shutil.rmtree, path, True)
    make_model("llama").save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


async def ticks_during(awaitable):
    """Await ``awaitable`` while a 1 ms ticker runs on the same loop; return (result, ticks).

    A call that blocked the event loop would let the ticker run once at most.
    """
    ticks, done = 0, False

    async def ticker():
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    try:
        return await awaitable, ticks
    finally:
        done = True
        await task


# The options the mechanics tests were written for: KV-Embedding as the paper describes it (the
# compression prompt, no post-processing), whatever the package's default becomes.
PAPER = {"method": "kv", "postprocess": "none"}
PAPER_ARGS = ("--method", "kv", "--postprocess", "none")
