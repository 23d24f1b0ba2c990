"""Memory bounds: the token budget caps every forward pass; out-of-memory halves the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import PAPER, TEXTS, make_model

from kv_embeddings_integrations import KVEmbedder

MIXED = [text * (1 + i % 4) for i, text in enumerate(TEXTS * 4)]


@pytest.fixture(scope="module")
def model():
    return make_model("qwen3")


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
