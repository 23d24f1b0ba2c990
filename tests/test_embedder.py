"""The core's public contract: shapes, order, batching, truncation, options and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import PAPER, TEXTS, make_model

from kv_embeddings_integrations import EmbedderConfig, KVEmbedder
from kv_embeddings_integrations.core.batching import plan_batches
from kv_embeddings_integrations.core.method.layer_selection import resolve_layers


# Function scope: an embedder keeps a request queue and worker thread that a test could leave busy.
@pytest.fixture
def embedder(tokenizer):
    return KVEmbedder(make_model("qwen3"), tokenizer, layers=[1, 2], **PAPER)


def test_shapes_and_dtype(embedder):
    many = embedder.encode(TEXTS)
    assert many.shape == (len(TEXTS), embedder.hidden_size) and many.dtype == np.float32
    one = embedder.encode(TEXTS[0])
    assert one.shape == (embedder.hidden_size,)
    np.testing.assert_allclose(one, many[0], atol=1e-6)
    assert embedder.encode([]).shape == (0, embedder.hidden_size)
    assert embedder.encode(iter(TEXTS[:2])).shape == (2, embedder.hidden_size)


def test_input_order_is_kept_across_batches(embedder):
    texts = TEXTS * 3
    reference = embedder.encode(texts, batch_size=len(texts))
    for batch_size in (1, 2, 4):
        np.testing.assert_allclose(embedder.encode(texts, batch_size=batch_size), reference, atol=1e-5)
    permutation = np.random.default_rng(0).permutation(len(texts))
    shuffled = embedder.encode([texts[i] for i in permutation], batch_size=3)
    np.testing.assert_allclose(shuffled, reference[permutation], atol=1e-5)


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


def test_truncation_cuts_the_text_and_keeps_the_prompt(tokenizer):
    embedder = KVEmbedder(make_model("llama"), tokenizer, layers=[1], max_length=24, **PAPER)
    long_text = " ".join(TEXTS * 4)
    with pytest.warns(UserWarning, match=r"1 of 2 texts were longer than max_length=24"):
        vectors = embedder.encode([long_text, "short"])
    assert np.isfinite(vectors).all()
    (encoded,) = embedder.tokenize([long_text])
    assert encoded.truncated and len(encoded) <= 24
    decoded = tokenizer.decode(encoded.input_ids)
    assert decoded.startswith('"Context: A man') and decoded.endswith('" Compress the Context in one word:')


def test_truncation_of_echo_cuts_both_copies(tokenizer):
    embedder = KVEmbedder(make_model("llama"), tokenizer, method="echo", max_length=40)
    (encoded,) = embedder.tokenize([" ".join(TEXTS * 3)])
    assert len(encoded) <= 40 and encoded.text_end - encoded.text_start > 0
    assert "rewritten sentence:" in tokenizer.decode(encoded.input_ids)


def test_max_length_errors(tokenizer):
    model = make_model("llama")
    with pytest.raises(ValueError, match="exceeds the model's context length of 1024"):
        KVEmbedder(model, tokenizer, max_length=5000, **PAPER)
    tiny = KVEmbedder(model, tokenizer, layers=[1], max_length=3, **PAPER)
    with pytest.raises(ValueError, match="max_length=3 is too small"):
        tiny.encode("anything at all")


def test_bad_inputs_are_named(embedder):
    with pytest.raises(TypeError, match=r"texts\[1\] is None, not str"):
        embedder.encode(["ok", None])
    with pytest.raises(TypeError, match="iterable of strings"):
        embedder.encode(b"bytes")
    with pytest.raises(ValueError, match="prompt_type"):
        embedder.encode("x", prompt_type="passage")
    with pytest.raises(ValueError, match="batch_size"):
        embedder.encode("x", batch_size=0)


def test_layers_resolution():
    assert resolve_layers(None, 4) == []
    with pytest.raises(ValueError, match=r"layers \[4\] out of range"):
        resolve_layers([1, 4], 4)


def test_config_round_trip_and_validation(tokenizer):
    config = EmbedderConfig(method="kv", layers=[3, 1, 1], bias=2, pooling="last", prompts={"query": "Q: {text}"})
    assert config.layers == [1, 3] and config.bias == 2.0
    assert EmbedderConfig.from_dict(config.to_dict()) == config
    embedder = KVEmbedder(make_model("llama"), tokenizer, config, bias=0.5, **PAPER)
    assert embedder.config.bias == 0.5 and embedder.config.layers == [1, 3]
    for bad in (
        {"method": "bogus"},
        {"layers": []},
        {"layers": [-1]},
        {"layers": "middle"},
        {"pooling": "max"},
        {"bias": "high"},
        {"prompts": {"document": "no placeholder"}},
        {"prompts": {"passage": "{text}"}},
        {"max_length": 0},
    ):
        with pytest.raises(ValueError):
            EmbedderConfig(**bad)
    with pytest.raises(ValueError, match="unknown embedder option"):
        EmbedderConfig.from_dict({"methd": "kv"})


def test_progress_bar(embedder, capsys):
    embedder.encode(TEXTS, batch_size=1, show_progress_bar=True)
    assert "Embedding" in capsys.readouterr().err
    embedder.encode(TEXTS, batch_size=1)
    assert "Embedding" not in capsys.readouterr().err


def test_repr_names_the_method_and_layers(embedder):
    assert "method='kv'" in repr(embedder) and "layers=[1, 2]" in repr(embedder)


def test_from_pretrained_local_dir_and_accelerate_dispatch(model_dir):
    plain = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], device="cpu", **PAPER)
    dispatched = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], device_map="auto", **PAPER)
    assert plain.name == str(model_dir) and plain.device.type == "cpu"
    assert plain.model.dtype == torch.float32
    np.testing.assert_allclose(dispatched.encode(TEXTS), plain.encode(TEXTS), atol=1e-5)
    half = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], dtype="bfloat16", **PAPER)
    assert half.model.dtype == torch.bfloat16
    assert np.isfinite(half.encode(TEXTS)).all()
    with pytest.raises(ValueError, match="dtype must be"):
        KVEmbedder.from_pretrained(str(model_dir), dtype="float33", **PAPER)
