"""Every kind of bad input has a defined behaviour: an error naming it, or a defined vector (wrong
types, empty, control characters, surrogates, long texts truncated or split by ``chunk_mean``, a
tokenizer without special tokens, an old saved config). The adapters' side: integrations/test_adapters.py."""

from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest
from helpers import PAPER, TEXTS, assert_unit_and_finite, make_model
from transformers import PreTrainedTokenizerFast

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core import embedder as embedder_module
from kv_embeddings_integrations.core.running.inputs import repair_surrogates

LONG = " ".join(TEXTS) * 40  # about 14k characters, far over max_length


# Function scope: an embedder keeps a request queue and worker thread that a test could leave busy.
@pytest.fixture
def embedder(tokenizer):
    return KVEmbedder(make_model("llama"), tokenizer, layers=[1, 2], max_length=64, **PAPER)


@pytest.mark.parametrize(
    ("texts", "error", "message"),
    [
        (["ok", None], TypeError, r"texts\[1\] is None, not str"),
        (["ok", "fine", 3], TypeError, r"texts\[2\] is int, not str"),
        ([b"bytes"], TypeError, r"texts\[0\] is bytes, not str"),
        (b"bytes", TypeError, "iterable of strings, got bytes"),
        (None, TypeError, "iterable of strings, got NoneType"),
        (42, TypeError, "iterable of strings, got int"),
    ],
)
def test_wrong_types_name_the_offending_item(embedder, texts, error, message):
    with pytest.raises(error, match=message):
        embedder.encode(texts)
    with pytest.raises(error, match=message):
        embedder.submit(texts)


def test_bad_inputs_are_named(embedder):
    with pytest.raises(TypeError, match=r"texts\[1\] is None, not str"):
        embedder.encode(["ok", None])
    with pytest.raises(TypeError, match="iterable of strings"):
        embedder.encode(b"bytes")
    with pytest.raises(ValueError, match="unknown prompt name 'summary'; known: 'document'"):
        embedder.encode("x", prompt_type="summary")
    with pytest.raises(ValueError, match="batch_size"):
        embedder.encode("x", batch_size=0)


def test_a_bad_item_deep_in_a_million_item_iterable_fails_before_any_forward(embedder, monkeypatch):
    forwards = []
    monkeypatch.setattr(embedder, "forward", lambda *a, **k: forwards.append(1))
    million = itertools.chain(("text" for _ in range(999_999)), [None])
    with pytest.raises(TypeError, match=r"texts\[999999\] is None"):
        embedder.encode(million)
    assert not forwards


def test_large_inputs_are_embedded_in_chunks_with_the_same_vectors(embedder, monkeypatch):
    texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(40)]
    whole = embedder.encode(texts)
    monkeypatch.setattr(embedder_module, "ENCODE_CHUNK", 7)
    encoded_sizes = []
    # Private on purpose: how many texts are tokenized at once is what this test pins.
    original = embedder._prompt_tokenizer.encode
    monkeypatch.setattr(
        embedder._prompt_tokenizer,
        "encode",
        lambda items, *args, **kwargs: encoded_sizes.append(len(items)) or original(items, *args, **kwargs),
    )
    chunked = embedder.encode(iter(texts))  # any iterable, here a one-shot iterator
    assert encoded_sizes == [7, 7, 7, 7, 7, 5]  # never more than a chunk of token ids at once
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_empty_inputs(embedder):
    assert embedder.encode([]).shape == (0, embedder.hidden_size)
    assert embedder.encode(iter(())).shape == (0, embedder.hidden_size)
    vectors = embedder.encode(["", "   ", "\n\t", "text"])
    assert_unit_and_finite(vectors)
    # The empty text is the prompt alone: the same vector alone or in a batch.
    np.testing.assert_allclose(embedder.encode(""), vectors[0], atol=1e-5)
    assert not np.allclose(vectors[0], vectors[3], atol=1e-3)


def test_strict_empty_texts_are_an_error(tokenizer):
    strict = KVEmbedder(make_model("llama"), tokenizer, layers=[1], empty_text="error", **PAPER)
    with pytest.raises(ValueError, match=r"texts 1, 3 are empty or whitespace only"):
        strict.encode(["a", "", "b", "  \n"])
    with pytest.raises(ValueError, match="empty or whitespace only"):
        strict.submit("")
    assert strict.encode(["a", "b"]).shape == (2, strict.hidden_size)


def test_control_characters_and_unusual_unicode_embed(embedder):
    texts = ["\x00\x07\x1b[31mred\x1b[0m", "\u200b\ufeff zero width", "emoji \U0001f600\U0001f680", "\u0301\u0301"]
    assert_unit_and_finite(embedder.encode(texts))


def test_unpaired_surrogates_are_replaced_with_a_warning(embedder):
    assert repair_surrogates("a\ud800b") == "a\ufffdb"
    assert repair_surrogates("\ud83d\ude00") == "\U0001f600"  # a valid pair becomes its character
    with pytest.warns(UserWarning, match=r"texts 1 hold unpaired UTF-16 surrogates.*U\+FFFD"):
        vectors = embedder.encode(["fine", "bad \udcff tail"])
    np.testing.assert_allclose(vectors[1], embedder.encode("bad \ufffd tail"), atol=1e-5)


def test_long_text_is_truncated_with_a_warning(embedder):
    with pytest.warns(UserWarning, match=r"1 of 2 texts were longer than max_length=64"):
        vectors = embedder.encode([LONG * 8, "short"])  # about 100k characters
    assert_unit_and_finite(vectors)


def test_chunk_mean_averages_the_pieces_by_token_count(tokenizer):
    model = make_model("llama")
    chunked = KVEmbedder(model, tokenizer, layers=[1, 2], max_length=64, long_text="chunk_mean", **PAPER)
    template = chunked.template("document")
    pieces = chunked._prompt_tokenizer.split(LONG, template)  # the splitter itself, on purpose
    assert len(pieces) > 3 and "".join(pieces) == LONG  # nothing lost or repeated
    encoded = chunked.tokenize(pieces)
    assert not any(e.truncated for e in encoded)  # every piece fits with the prompt
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # so no truncation warning either
        raw_pieces = chunked.encode(pieces, normalize=False)
        got = chunked.encode([LONG, "short"], normalize=False)
    weights = np.array([e.text_end - e.text_start for e in encoded], dtype=np.float64)  # text tokens
    expected = (raw_pieces * weights[:, None]).sum(0) / weights.sum()
    np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=1e-5)
    # Texts that fit are embedded exactly as with truncation.
    plain = KVEmbedder(model, tokenizer, layers=[1, 2], max_length=64, **PAPER)
    np.testing.assert_allclose(got[1], plain.encode("short", normalize=False), atol=1e-6)
    assert_unit_and_finite(chunked.encode([LONG]))


def test_chunk_mean_with_echo_fits_both_copies(tokenizer):
    echo = KVEmbedder(make_model("llama"), tokenizer, method="echo", max_length=80, long_text="chunk_mean")
    for text in echo._prompt_tokenizer.split(LONG, echo.template("document")):
        assert len(echo.tokenize([text])[0]) <= 80
    assert_unit_and_finite(echo.encode([LONG]))


def test_tokenizer_without_pad_or_eos_token(tokenizer):
    bare = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)  # no special tokens named
    assert bare.pad_token_id is None and bare.eos_token_id is None
    assert_unit_and_finite(KVEmbedder(make_model("qwen3"), bare, layers=[1, 2], **PAPER).encode(TEXTS))


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_a_saved_config_without_layer_types_loads_and_embeds(family, tokenizer, tmp_path):
    make_model(family).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("layer_types", None)  # as configs saved by older transformers releases
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = KVEmbedder.from_pretrained(str(tmp_path), layers=[1, 2], device="cpu", **PAPER)
    assert_unit_and_finite(loaded.encode(TEXTS))
