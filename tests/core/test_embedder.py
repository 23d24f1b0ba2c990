"""``KVEmbedder.encode``'s contract: shapes and dtype, input order across batches, truncation that
keeps the prompt, ``max_length`` errors, the progress bar and the repr."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import PAPER, TEXTS, make_model

from kv_embeddings_integrations import KVEmbedder


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


def test_progress_bar(embedder, capsys):
    embedder.encode(TEXTS, batch_size=1, show_progress_bar=True)
    assert "Embedding" in capsys.readouterr().err
    embedder.encode(TEXTS, batch_size=1)
    assert "Embedding" not in capsys.readouterr().err


def test_repr_names_the_method_and_layers(embedder):
    assert "method='kv'" in repr(embedder) and "layers=[1, 2]" in repr(embedder)
