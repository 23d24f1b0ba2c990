"""Test helpers, importable by any test: a byte-level BPE tokenizer trained in-process, tiny random
decoders of each covered family, their texts, and small async utilities. Fixtures live in conftest.py."""

from __future__ import annotations

import asyncio
import atexit
import functools
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
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

# The tests folder (its data/ and gated_serve.py) and the repository root above it: test files live
# one folder down (tests/core/, tests/serving/, ...), so they name these paths through here.
TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

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


# Texts holding this marker fail to tokenize under RejectingTokenizer (a fault to inject)...
REJECTED = "<<reject me>>"
# ...and texts holding this one never finish tokenizing (a worker stuck for good, to be killed).
HANGS = "<<hang here>>"


class RejectingTokenizer(PreTrainedTokenizerFast):
    """A tokenizer that raises on texts holding ``REJECTED`` and blocks forever on texts holding
    ``HANGS`` (after creating the file named by its ``hang_signal``, so a test knows it got there):
    faults inside pool workers, which receive their tokenizer pickled (so this class must live in
    an importable module)."""

    hang_signal: str | None = None

    def __call__(self, text, *args, **kwargs):
        for item in [text] if isinstance(text, str) else text:
            if REJECTED in item:
                raise TypeError(f"cannot tokenize a text holding {REJECTED!r}")
            if HANGS in item and self.hang_signal is not None:
                with open(self.hang_signal, "w"):
                    pass
                threading.Event().wait()  # never set
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


@functools.cache
def tied_model_dir() -> str:
    """A tiny Llama whose LM head is its word embeddings, saved as a model directory: a base-model
    load (``KVEmbedder.from_pretrained``) keeps its head, so it gives sparse vectors."""
    path = tempfile.mkdtemp(prefix="tiny-tied-llama-")
    atexit.register(shutil.rmtree, path, True)
    make_model("llama", tie_word_embeddings=True).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


# Seconds a test waits for something that must happen: reached only when something hangs, so
# generous (a loaded 2-core machine may be slow, never this slow). Never the thing asserted.
HANG = 60

# Seconds worker processes, threads or a server get to finish and exit by themselves before they
# count as hung (and are terminated). On a loaded machine exiting is slow (a pool's two workers have
# taken over 10 s): the tests assert that they exit cleanly (by their sentinel, with status 0), not
# how fast, so this is far above any slow exit and reached only by a hang. Waiting ends at the exit.
EXIT_TIMEOUT = 300


def wait_until(condition: Callable[[], bool], what: str, timeout: float = HANG) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` if it never does (a hang, not a race:
    the condition is the event the test waits for, not a guess at how long it takes)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


class PassGate:
    """Holds coalesced forward passes until the test releases them.

    Register it as a start listener (``embedder.batch_start_listeners.append(gate)``, or a
    coalescer's ``start_listeners``): each pass reports its number of texts and waits, on the
    worker thread, until :meth:`release` lets it run or :meth:`open` lets every pass run. While a
    pass is held its requests can no longer be withdrawn, and every later request waits in the
    queue: the test decides the interleaving instead of guessing it with sleeps.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.started: list[int] = []  # sizes of the passes that reached the gate, in order
        self._released = 0
        self._open = False
        self.stuck = False  # a pass waited HANG seconds and ran without being released

    def __call__(self, size: int) -> None:
        with self._condition:
            self.started.append(size)
            index = len(self.started)
            self._condition.notify_all()
            released = self._condition.wait_for(lambda: self._open or self._released >= index, timeout=HANG)
            self.stuck = self.stuck or not released

    def wait_started(self, count: int = 1) -> list[int]:
        """Block until ``count`` passes reached the gate; their sizes."""
        with self._condition:
            reached = self._condition.wait_for(lambda: len(self.started) >= count, timeout=HANG)
            assert reached, f"only {len(self.started)} of {count} forward passes started within {HANG} s"
            return list(self.started)

    def release(self, count: int = 1) -> None:
        """Let the next ``count`` held (or future) passes run."""
        with self._condition:
            self._released += count
            self._condition.notify_all()

    def open(self) -> None:
        """Let every pass run, held or future."""
        with self._condition:
            self._open = True
            self._condition.notify_all()


async def with_loop_free(embedder, awaitable):
    """Await ``awaitable`` (a call that embeds through ``embedder``'s coalescing), proving it left the
    event loop free: its first forward pass is held until a coroutine on this same loop releases
    it. A call that blocked the loop would keep that coroutine from running; the pass would then
    wait HANG seconds and the assertion below fail. No timing is assumed either way.
    """
    gate = PassGate()
    embedder.batch_start_listeners.append(gate)
    try:
        task = asyncio.ensure_future(awaitable)
        await asyncio.to_thread(gate.wait_started, 1)
        gate.open()  # runs only if the loop is free while the pass is held
        result = await task
    finally:
        embedder.batch_start_listeners.remove(gate)
    assert not gate.stuck, "the event loop was blocked while a forward pass was held"
    return result


def assert_unit_and_finite(vectors: np.ndarray) -> None:
    """Every vector finite and of unit length (the defined answer to an input without a better one)."""
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=-1), 1.0, atol=1e-5)


# The options the mechanics tests were written for: KV-Embedding as the paper describes it (the
# compression prompt, no post-processing), whatever the package's default becomes.
PAPER = {"method": "kv", "postprocess": "none", "lexical": "none"}
PAPER_ARGS = ("--method", "kv", "--postprocess", "none", "--lexical", "none")
