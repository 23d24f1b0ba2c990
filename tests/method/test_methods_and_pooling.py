"""Each method and pooling computes what it claims, checked against values computed by hand."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import PAPER, TEXTS, make_model
from reference import reference_hidden_states

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.prompts import DOCUMENT_PROMPT, QUERY_PROMPT


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


def _plain_hidden(model, tokenizer, string: str) -> torch.Tensor:
    plain = copy.deepcopy(model)
    ids = tokenizer(string)["input_ids"]
    with torch.no_grad():
        return plain.get_decoder()(input_ids=torch.tensor([ids]), use_cache=False).last_hidden_state[0]


def _unit(v: torch.Tensor) -> np.ndarray:
    v = v.double()
    return (v / v.norm()).float().numpy()


def _close(a, b):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("text", TEXTS[:3])
def test_last_is_last_token_of_raw_text(model, tokenizer, text):
    hidden = _plain_hidden(model, tokenizer, text)
    _close(
        KVEmbedder(model, tokenizer, postprocess="none", lexical="none", method="last").encode(text), _unit(hidden[-1])
    )


@pytest.mark.parametrize("text", TEXTS[:3])
def test_mean_is_mean_of_raw_text(model, tokenizer, text):
    hidden = _plain_hidden(model, tokenizer, text)
    _close(
        KVEmbedder(model, tokenizer, postprocess="none", lexical="none", method="mean").encode(text),
        _unit(hidden.mean(0)),
    )


def test_prompteol_is_last_token_of_its_template(model, tokenizer):
    text = TEXTS[1]
    hidden = _plain_hidden(model, tokenizer, f'This sentence : "{text}" means in one word:"')
    _close(
        KVEmbedder(model, tokenizer, postprocess="none", lexical="none", method="prompteol").encode(text),
        _unit(hidden[-1]),
    )


def test_prompt_is_mean_last_of_compression_prompt(model, tokenizer):
    text = TEXTS[0]
    for prompt_type, template in (("document", DOCUMENT_PROMPT), ("query", QUERY_PROMPT)):
        hidden = _plain_hidden(model, tokenizer, template.replace("{text}", text))
        expected = _unit((hidden.mean(0) + hidden[-1]) / 2)
        _close(
            KVEmbedder(model, tokenizer, postprocess="none", lexical="none", method="prompt").encode(
                text, prompt_type=prompt_type
            ),
            expected,
        )


def test_echo_is_mean_of_second_copy(model, tokenizer):
    text = TEXTS[1]
    string = f"Rewrite the sentence: {text}, rewritten sentence: {text}"
    start = len(string) - len(text)
    offsets = tokenizer(string, return_offsets_mapping=True)["offset_mapping"]
    second = [i for i, (s, e) in enumerate(offsets) if e > start]
    assert 0 < len(second) < len(offsets) // 2 + 2
    hidden = _plain_hidden(model, tokenizer, string)
    _close(
        KVEmbedder(model, tokenizer, postprocess="none", lexical="none", method="echo").encode(text),
        _unit(hidden[second].mean(0)),
    )


@pytest.mark.parametrize("pooling", ["mean_last", "mean", "last"])
def test_kv_pooling_of_rerouted_states(model, tokenizer, pooling):
    text = TEXTS[3]
    embedder = KVEmbedder(model, tokenizer, layers=[1, 2], bias=1.0, pooling=pooling, **PAPER)
    ids = tokenizer(DOCUMENT_PROMPT.replace("{text}", text))["input_ids"]
    hidden = reference_hidden_states(model, ids, [1, 2], 1.0)
    expected = {"mean": hidden.mean(0), "last": hidden[-1], "mean_last": (hidden.mean(0) + hidden[-1]) / 2}[pooling]
    _close(embedder.encode(text), _unit(expected))


def test_mean_scope_text_averages_only_the_text(model, tokenizer):
    text = TEXTS[1]
    string = DOCUMENT_PROMPT.replace("{text}", text)
    start = string.index(text)
    offsets = tokenizer(string, return_offsets_mapping=True)["offset_mapping"]
    inside = [i for i, (s, e) in enumerate(offsets) if s < start + len(text) and e > start]
    hidden = _plain_hidden(model, tokenizer, string)
    embedder = KVEmbedder(
        model, tokenizer, postprocess="none", lexical="none", method="prompt", pooling="mean", mean_scope="text"
    )
    _close(embedder.encode(text), _unit(hidden[inside].mean(0)))


def test_normalize_switch(model, tokenizer):
    embedder = KVEmbedder(model, tokenizer, layers=[1], **PAPER)
    raw = embedder.encode(TEXTS, normalize=False)
    unit = embedder.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-6)


def test_kv_differs_from_prompt_only_by_rerouting(model, tokenizer):
    prompt = KVEmbedder(model, tokenizer, postprocess="none", lexical="none", method="prompt").encode(TEXTS)
    no_layers = KVEmbedder(model, tokenizer, postprocess="none", lexical="none", method="kv", layers=None).encode(TEXTS)
    routed = KVEmbedder(model, tokenizer, postprocess="none", lexical="none", method="kv", layers=[1]).encode(TEXTS)
    np.testing.assert_array_equal(prompt, no_layers)
    assert not np.allclose(prompt, routed, atol=1e-3)


def test_custom_prompts(model, tokenizer):
    template = "Represent for retrieval: {text}"
    embedder = KVEmbedder(
        model,
        tokenizer,
        postprocess="none",
        lexical="none",
        method="prompt",
        prompts={"query": template},
        pooling="last",
    )
    hidden = _plain_hidden(model, tokenizer, template.replace("{text}", TEXTS[0]))
    _close(embedder.encode(TEXTS[0], prompt_type="query"), _unit(hidden[-1]))
    assert embedder.template("document") == DOCUMENT_PROMPT
