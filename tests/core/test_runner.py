"""The batched forward (``core/runner.py``): batches planned by length and token budget, the budget
capping every pass, out-of-memory halving the batch, float16 overflow re-embedded in float32, NaN
naming its texts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import PAPER, TEXTS, assert_unit_and_finite, make_model

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.running.batching import plan_batches

MIXED = [text * (1 + i % 4) for i, text in enumerate(TEXTS * 4)]


@pytest.fixture(scope="module")
def model():
    return make_model("qwen3")


# Function scope: an embedder keeps a request queue and worker thread that a test could leave busy.
@pytest.fixture
def embedder(tokenizer):
    return KVEmbedder(make_model("llama"), tokenizer, layers=[1, 2], max_length=64, **PAPER)


def _spy_forwards(embedder, monkeypatch) -> list[tuple[int, int]]:
    """Record (rows, padded width) of every forward pass, through the runner's seam."""
    shapes: list[tuple[int, int]] = []
    original = embedder.runner.forward

    def spy(batch):
        shapes.append(tuple(batch.input_ids.shape))
        return original(batch)

    monkeypatch.setattr(embedder.runner, "forward", spy)
    return shapes


@pytest.mark.parametrize("budget", [64, 200, 1000])
def test_token_budget_caps_every_forward(model, tokenizer, budget, monkeypatch):
    embedder = KVEmbedder(model, tokenizer, layers=[1, 2], max_tokens_per_batch=budget, **PAPER)
    shapes = _spy_forwards(embedder, monkeypatch)
    vectors = embedder.encode(MIXED)
    assert sum(rows for rows, _ in shapes) == len(MIXED)
    # A row longer than the budget runs alone; otherwise rows x width stays within it.
    assert all(rows * width <= budget or rows == 1 for rows, width in shapes)
    reference = KVEmbedder(model, tokenizer, layers=[1, 2], batch_size=len(MIXED), **PAPER).encode(MIXED)
    np.testing.assert_allclose(vectors, reference, atol=1e-5)


def test_token_budget_batching(tokenizer):
    model = make_model("llama")
    budget = KVEmbedder(model, tokenizer, layers=[1], max_tokens_per_batch=40, **PAPER)
    fixed = KVEmbedder(model, tokenizer, layers=[1], batch_size=2, **PAPER)
    np.testing.assert_allclose(budget.encode(TEXTS * 2), fixed.encode(TEXTS * 2), atol=1e-5)


def test_plan_batches():
    lengths = [5, 30, 10, 10, 50, 2]
    # 50 -> 30 would pad by 20 tokens (> 16 and > 20%): a new batch; 10 -> 5 -> 2 pads little.
    assert plan_batches(lengths, 2, None) == [[4], [1], [2, 3], [0, 5]]
    assert plan_batches(lengths, None, None) == [[4], [1], [2, 3, 0, 5]]
    batches = plan_batches(lengths, None, 60)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 60 or len(b) == 1
    assert plan_batches([100, 3], None, 10) == [[0], [1]]
    # Similar lengths fill whole batches; small absolute gaps never split.
    assert plan_batches([40, 39, 38, 37, 36, 35], 4, None) == [[0, 1, 2, 3], [4, 5]]
    assert plan_batches([20, 10, 5], None, None) == [[0, 1, 2]]
    assert plan_batches([100, 81, 79], None, None) == [[0, 1], [2]]


def _oom_above(embedder, monkeypatch, max_rows: int) -> list[int]:
    """Make forwards of more than ``max_rows`` rows fail as CUDA would; returns the rows tried."""
    tried: list[int] = []
    original = embedder.runner.forward

    def limited(batch):
        rows = batch.input_ids.shape[0]
        tried.append(rows)
        if rows > max_rows:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated: {rows} rows)")
        return original(batch)

    monkeypatch.setattr(embedder.runner, "forward", limited)
    return tried


def test_out_of_memory_splits_and_matches_the_unsplit_run(model, tokenizer, monkeypatch):
    embedder = KVEmbedder(model, tokenizer, layers=[1, 2], batch_size=len(MIXED), **PAPER)
    unsplit = embedder.encode(MIXED)
    tried = _oom_above(embedder, monkeypatch, max_rows=3)
    split = embedder.encode(MIXED)
    assert max(tried) > 3, "some batch was split"
    # The halves keep the batch's padded width, so every row sees the same computation; only
    # the matrix kernels' blocking may change with the row count (float32 rounding, ~1e-8).
    np.testing.assert_allclose(split, unsplit, rtol=0, atol=1e-6)


def test_out_of_memory_on_one_row_names_the_limit(model, tokenizer, monkeypatch):
    embedder = KVEmbedder(model, tokenizer, layers=[1, 2], batch_size=4, **PAPER)
    _oom_above(embedder, monkeypatch, max_rows=0)
    with pytest.raises(torch.OutOfMemoryError, match=r"single text of \d+ tokens.*down to 1 row"):
        embedder.encode(TEXTS[:4])


def test_float16_overflow_is_re_embedded_in_float32(tokenizer):
    model = make_model("llama")
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight.mul_(3e4)  # activations far beyond float16's 65504
    reference = KVEmbedder(model, tokenizer, layers=[1, 2], **PAPER).encode(TEXTS)
    half = KVEmbedder(make_model("llama").half(), tokenizer, layers=[1, 2], **PAPER)
    half.model.load_state_dict({k: v.half() for k, v in model.state_dict().items()})
    with pytest.warns(UserWarning, match=r"non-finite values in torch.float16; re-embedding their batch in float32"):
        vectors = half.encode(TEXTS)
    assert_unit_and_finite(vectors)
    np.testing.assert_allclose(vectors, reference, atol=2e-2)  # float16 weights, float32 arithmetic
    assert next(half.model.parameters()).dtype == torch.float16  # the model itself is unchanged


def test_nan_in_a_float32_model_names_the_texts(embedder, monkeypatch):
    original = embedder.runner.forward

    def poisoned(batch):
        out = original(batch)
        out[0] = float("nan")
        return out

    monkeypatch.setattr(embedder.runner, "forward", poisoned)
    with pytest.raises(FloatingPointError, match=r"1 texts gave NaN or infinite embeddings in torch.float32"):
        embedder.encode(["a cat", "a dog"])
