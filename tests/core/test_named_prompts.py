"""Named prompts (sentence-transformers' ``prompts`` / ``prompt_name``) and the other providers'
names for the two sides, checked against the plain model's hidden states computed by hand."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import TEXTS, make_model

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.identity import EmbedderMismatchError, check_identity, postprocessing_key
from kv_embeddings_integrations.core.prompts import INPUT_TYPES

CLUSTER = "Identify the topic of this text: {text}"


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


def _last_token_of(model, tokenizer, string: str) -> np.ndarray:
    """The reference: the plain model's last hidden state of the prompted string, unit length."""
    ids = tokenizer(string)["input_ids"]
    with torch.no_grad():
        hidden = copy.deepcopy(model).get_decoder()(input_ids=torch.tensor([ids]), use_cache=False).last_hidden_state
    v = hidden[0, -1].double()
    return (v / v.norm()).float().numpy()


def test_a_named_prompt_embeds_with_its_template(model, tokenizer):
    embedder = KVEmbedder(
        model,
        tokenizer,
        method="prompt",
        pooling="last",
        postprocess="none",
        lexical="none",
        prompts={"clustering_topic": CLUSTER},
    )
    for text in TEXTS[:3]:
        expected = _last_token_of(model, tokenizer, CLUSTER.replace("{text}", text))
        np.testing.assert_allclose(embedder.encode(text, prompt_name="clustering_topic"), expected, atol=2e-5)
        # prompt_type takes the same names; the core passes the name through every path.
        np.testing.assert_array_equal(
            embedder.encode([text], prompt_type="clustering_topic"),
            embedder.embed([text], prompt_name="clustering_topic").vectors,
        )
    assert embedder.templates("clustering_topic") == (CLUSTER,)
    assert embedder.prompt_names[0] == "clustering_topic"
    # The two sides keep the family's templates.
    assert embedder.template("document") != CLUSTER and embedder.template("query") != CLUSTER


def test_providers_names_for_the_two_sides_and_a_symmetric_task(model, tokenizer):
    embedder = KVEmbedder(model, tokenizer, method="kv", layers=[1], postprocess="none", lexical="none")
    query, document = embedder.encode(TEXTS, prompt_type="query"), embedder.encode(TEXTS)
    assert not np.allclose(query, document)
    for name, side in INPUT_TYPES.items():
        np.testing.assert_array_equal(embedder.encode(TEXTS, prompt_name=name), query if side == "query" else document)
    # A name of the config wins over a provider's name; a symmetric task's custom name keeps its template.
    own = KVEmbedder(
        model,
        tokenizer,
        task="similarity",
        layers=[1],
        postprocess="none",
        lexical="none",
        prompts={"passage": CLUSTER},
    )
    assert own.templates("passage") == (CLUSTER,)
    assert own.templates("query") == own.templates("document") != (CLUSTER,)


def test_unknown_names_and_conflicting_arguments_are_errors(model, tokenizer):
    embedder = KVEmbedder(model, tokenizer, layers=None, postprocess="none", lexical="none", prompts={"topic": CLUSTER})
    with pytest.raises(
        ValueError, match=r"unknown prompt name 'topc'; known: 'topic', 'document', 'query', 'search_document'"
    ):
        embedder.encode(TEXTS, prompt_name="topc")
    with pytest.raises(ValueError, match="give prompt_type or prompt_name, not both"):
        embedder.encode(TEXTS, prompt_type="query", prompt_name="topic")
    with pytest.raises(ValueError, match="non-empty prompt names"):
        KVEmbedder(model, tokenizer, layers=None, prompts={" ": CLUSTER})
    with pytest.raises(ValueError, match="must be a string containing"):
        KVEmbedder(model, tokenizer, layers=None, prompts={"topic": "no placeholder"})


def test_the_identity_records_named_prompts_and_the_fit_ignores_them(model, tokenizer):
    plain = KVEmbedder(model, tokenizer, layers=[1])
    named = KVEmbedder(model, tokenizer, layers=[1], prompts={"topic": CLUSTER})
    other = KVEmbedder(model, tokenizer, layers=[1], prompts={"topic": "Topic: {text}"})
    more = KVEmbedder(model, tokenizer, layers=[1], prompts={"topic": CLUSTER, "intent": "Intent: {text}"})
    assert named.identity()["named_templates"] == {"topic": CLUSTER}
    assert "named_templates" not in plain.identity() and plain.identity()["templates"] == named.identity()["templates"]
    with pytest.raises(EmbedderMismatchError, match=r"named_templates\['topic'\]: stored"):
        check_identity(named.identity(), other.identity())
    # A prompt added (or left out) changes no vector the store holds: both ways pass, and the
    # fingerprint (the compared fields) stays the same.
    for a, b in ((plain, named), (named, plain), (named, more)):
        check_identity(a.identity(), b.identity())
    assert plain.identity()["fingerprint"] == named.identity()["fingerprint"] == more.identity()["fingerprint"]
    # The centering is fitted with the document prompt: another named prompt does not refit it.
    texts = ["t"] * 3
    assert postprocessing_key(plain, texts) == postprocessing_key(named, texts)
    np.testing.assert_array_equal(plain.postprocessor.mean, named.postprocessor.mean)
