"""Prompt families (templates, pooled layer, re-routing on any family, composed options) and Token
Prepending, each against an explicit computation written here or in ``reference.py``."""

from __future__ import annotations

import copy
import typing

import numpy as np
import pytest
import torch
from helpers import TEXTS, make_model
from reference import reference_hidden_states, token_prepending_hidden_states

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.config import MethodName
from kv_embeddings_integrations.core.method import token_prepending as tp
from kv_embeddings_integrations.core.prompts import FAMILIES, KE_PROMPT, METAEOL_PROMPTS, METHODS, PCOT_PROMPT


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


@pytest.fixture(scope="module")
def long_model():
    # MetaEOL's prompts are long for the tiny character-level tokenizer.
    return make_model("llama", max_position_embeddings=1024)


@pytest.fixture(scope="module")
def deep_model():
    # Deep enough that Token Prepending's scaled range spans more than one layer.
    return make_model("llama", num_hidden_layers=12)


def _plain_states(model, tokenizer, string: str) -> tuple[torch.Tensor, ...]:
    ids = tokenizer(string)["input_ids"]
    with torch.no_grad():
        out = copy.deepcopy(model).get_decoder()(
            input_ids=torch.tensor([ids]), use_cache=False, output_hidden_states=True
        )
    return out.hidden_states


def _unit(v: torch.Tensor) -> np.ndarray:
    v = v.double()
    return (v / v.norm()).float().numpy()


def _close(a, b):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_templates_are_the_papers():
    # Exact strings of the authors' code (ZBWpro/PretCoTandKE settings.py, Yibin-Lei/MetaEOL).
    assert PCOT_PROMPT == 'After thinking step by step , this sentence : "{text}" means in one word:"'
    assert KE_PROMPT.startswith("The essence of a sentence is often captured by its main subjects and actions")
    assert KE_PROMPT.endswith('With this in mind , this sentence : "{text}" means in one word:"')
    assert len(METAEOL_PROMPTS) == 8
    for template in METAEOL_PROMPTS:
        assert template.startswith("In this task, you're ")
        assert 'this sentence : "{text}" ' in template and template.endswith(' in one word:"')
    assert len(set(METAEOL_PROMPTS)) == 8


def test_every_method_is_a_config_choice_and_every_family_is_used():
    assert set(METHODS) == set(typing.get_args(MethodName))
    assert {spec.family for spec in METHODS.values()} == set(FAMILIES)


@pytest.mark.parametrize("family,template,layer", [("pcot", PCOT_PROMPT, -2), ("ke", KE_PROMPT, -2)])
def test_pcot_and_ke_pool_the_second_to_last_layer(long_model, tokenizer, family, template, layer):
    text = TEXTS[1]
    states = _plain_states(long_model, tokenizer, template.replace("{text}", text))
    embedder = KVEmbedder(long_model, tokenizer, postprocess="none", lexical="none", method=family, max_length=1024)
    assert embedder.output_layer == embedder.num_layers - 2
    # hidden_states[-2] is the output of the second-to-last layer, before any final norm.
    _close(embedder.encode(text), _unit(states[layer][0, -1]))


def test_output_layer_pools_that_layers_output(model, tokenizer):
    text = TEXTS[0]
    states = _plain_states(model, tokenizer, f'This sentence : "{text}" means in one word:"')
    for layer in (0, 1, 2):
        embedder = KVEmbedder(
            model, tokenizer, postprocess="none", lexical="none", method="prompteol", output_layer=layer
        )
        _close(embedder.encode(text), _unit(states[layer + 1][0, -1]))
    # The last layer is the model's last_hidden_state (final norm applied), by index or -1.
    _close(
        KVEmbedder(model, tokenizer, postprocess="none", lexical="none", method="prompteol", output_layer=3).encode(
            text
        ),
        _unit(states[-1][0, -1]),
    )


def test_metaeol_averages_the_eight_prompts_last_tokens(long_model, tokenizer):
    text = TEXTS[2]
    lasts = [_plain_states(long_model, tokenizer, t.replace("{text}", text))[-1][0, -1] for t in METAEOL_PROMPTS]
    embedder = KVEmbedder(long_model, tokenizer, postprocess="none", lexical="none", method="metaeol", max_length=1024)
    _close(embedder.encode(text), _unit(torch.stack(lasts).mean(0)))
    # The cost is stated in tokens: every prompt's tokens are counted.
    result = embedder.embed([text])
    lengths = [len(tokenizer(t.replace("{text}", text))["input_ids"]) for t in METAEOL_PROMPTS]
    assert result.token_counts == (sum(lengths),)


@pytest.mark.parametrize("method", ["kv_prompteol", "kv_pcot", "kv_ke"])
def test_rerouting_on_any_family_matches_the_reference(long_model, tokenizer, method):
    embedder = KVEmbedder(
        long_model,
        tokenizer,
        postprocess="none",
        lexical="none",
        method=method,
        layers=[0, 1],
        bias=1.5,
        max_length=1024,
    )
    texts = TEXTS[:3]
    encoded = embedder.tokenize(texts)
    vectors = embedder.encode(texts)  # one padded batch
    for vector, e in zip(vectors, encoded, strict=True):
        output_layer = None if embedder.output_layer == embedder.num_layers - 1 else embedder.output_layer
        hidden = reference_hidden_states(long_model, e.input_ids, [0, 1], 1.5, output_layer=output_layer)
        _close(vector, _unit(hidden[-1]))


def test_reroute_and_family_options_compose(model, tokenizer):
    # kv_prompteol is prompteol + reroute; the options say the same in any combination.
    text = TEXTS[0]
    preset = KVEmbedder(model, tokenizer, postprocess="none", lexical="none", method="kv_prompteol", layers=[1]).encode(
        text
    )
    composed = KVEmbedder(
        model, tokenizer, postprocess="none", lexical="none", method="prompteol", reroute=True, layers=[1]
    ).encode(text)
    by_family = KVEmbedder(
        model, tokenizer, postprocess="none", lexical="none", method="kv", prompt_family="prompteol", layers=[1]
    ).encode(text)
    np.testing.assert_array_equal(preset, composed)
    np.testing.assert_array_equal(preset, by_family)
    off = KVEmbedder(model, tokenizer, postprocess="none", lexical="none", method="kv_prompteol", reroute=False).encode(
        text
    )
    np.testing.assert_array_equal(
        off, KVEmbedder(model, tokenizer, postprocess="none", lexical="none", method="prompteol").encode(text)
    )
    assert not np.allclose(preset, off)


def test_kv_method_is_unchanged_by_the_family_axis(model, tokenizer):
    # The paper's recipe: compression prompt, mean_last of the final layer.
    embedder = KVEmbedder(model, tokenizer, postprocess="none", lexical="none", method="kv", layers=[1])
    assert (embedder.pooling, embedder.output_layer, embedder.template("query")) == (
        "mean_last",
        3,
        '"Query: {text}" Compress the Query in one word:',
    )


def test_layers_after_the_pooled_one_are_refused(model, tokenizer):
    with pytest.raises(ValueError, match=r"layers \[3\] come after output_layer 2"):
        KVEmbedder(model, tokenizer, postprocess="none", lexical="none", method="kv_pcot", layers=[1, 3])


def test_automatic_layers_stop_at_the_pooled_layer(model, tokenizer):
    embedder = KVEmbedder(model, tokenizer, postprocess="none", lexical="none", method="kv_pcot")
    assert embedder.layers and max(embedder.layers) <= embedder.output_layer == 2
    assert embedder.layer_selection.key["rule"]["last_layer"] == 2
    # The selection measured the prompt in use.
    assert embedder.layer_selection.key["template"] == PCOT_PROMPT


# -- Token Prepending -----------------------------------------------------------------------------


def test_token_prepending_layers_scale_with_depth():
    # The official setting on 32 layers: replace entering layers 1..6, pool layer 26's output.
    assert tp.scaled_layers(32) == (1, 7)
    assert tp.scaled_output_layer(32) == 26
    assert tp.scaled_layers(30) == (1, 7) and tp.scaled_output_layer(30) == 24  # SmolLM2-135M
    assert tp.scaled_layers(18) == (1, 4) and tp.scaled_output_layer(18) == 14  # Gemma-3-270m
    assert tp.scaled_layers(4) == (1, 2) and tp.scaled_output_layer(4) == 2


def test_token_prepending_places_one_placeholder_before_the_text(deep_model, tokenizer):
    embedder = KVEmbedder(deep_model, tokenizer, postprocess="none", lexical="none", method="tp")
    plain = KVEmbedder(deep_model, tokenizer, postprocess="none", lexical="none", method="prompteol")
    (with_marker,), (without,) = embedder.tokenize([TEXTS[0]]), plain.tokenize([TEXTS[0]])
    at = with_marker.marker
    assert at == without.text_start - 1
    assert with_marker.input_ids == without.input_ids[:at] + [tp.placeholder_id(tokenizer)] + without.input_ids[at:]
    assert (with_marker.text_start, with_marker.text_end) == (without.text_start + 1, without.text_end + 1)


def test_token_prepending_matches_the_reference(deep_model, tokenizer):
    embedder = KVEmbedder(deep_model, tokenizer, postprocess="none", lexical="none", method="tp")
    start, stop = embedder.prepend_layers
    assert (start, stop) == (1, 3) and embedder.output_layer == tp.scaled_output_layer(12) == 9
    texts = TEXTS[:4]
    vectors = embedder.encode(texts)  # padded batch: each row's placeholder at its own column
    for vector, e in zip(vectors, embedder.tokenize(texts), strict=True):
        hidden = token_prepending_hidden_states(deep_model, e.input_ids, e.marker, start, stop, embedder.output_layer)
        _close(vector, _unit(hidden[-1]))


def test_token_prepending_changes_the_vector_and_is_inert_when_off(deep_model, tokenizer):
    text = TEXTS[1]
    before = KVEmbedder(deep_model, tokenizer, postprocess="none", lexical="none", method="prompteol").encode(text)
    on = KVEmbedder(deep_model, tokenizer, postprocess="none", lexical="none", method="tp")
    # The placeholder alone (no replacement) differs from Token Prepending.
    e = on.tokenize([text])[0]
    no_replacement = token_prepending_hidden_states(deep_model, e.input_ids, e.marker, 0, 0, on.output_layer)
    assert not np.allclose(on.encode(text), _unit(no_replacement[-1]), atol=1e-3)
    # Hooks stay installed but do nothing for an embedder without Token Prepending.
    np.testing.assert_array_equal(
        KVEmbedder(deep_model, tokenizer, postprocess="none", lexical="none", method="prompteol").encode(text), before
    )


def test_token_prepending_composes_with_other_families(deep_model, tokenizer):
    embedder = KVEmbedder(
        deep_model, tokenizer, postprocess="none", lexical="none", method="pcot", token_prepending=True
    )
    e = embedder.tokenize([TEXTS[0]])[0]
    hidden = token_prepending_hidden_states(deep_model, e.input_ids, e.marker, 1, 3, embedder.output_layer)
    assert embedder.output_layer == 9  # Token Prepending's scaled layer unless output_layer is given
    _close(embedder.encode(TEXTS[0]), _unit(hidden[-1]))


def test_token_prepending_keeps_max_length(deep_model, tokenizer):
    embedder = KVEmbedder(deep_model, tokenizer, postprocess="none", lexical="none", method="tp", max_length=40)
    with pytest.warns(UserWarning, match="truncated"):
        embedder.encode("word " * 100)
    (e,) = embedder.tokenize(["word " * 100])
    assert len(e) == 40 and e.truncated


def test_batch_composition_does_not_change_new_methods(deep_model, tokenizer):
    for method in ("tp", "kv_pcot", "ke"):
        embedder = KVEmbedder(
            deep_model,
            tokenizer,
            postprocess="none",
            lexical="none",
            method=method,
            layers="auto" if "kv" in method else None,
        )
        together = embedder.encode(TEXTS[:5])
        alone = np.stack([embedder.encode(t) for t in TEXTS[:5]])
        np.testing.assert_allclose(together, alone, atol=2e-5)
