"""Per-token states (``embed_tokens``, a server's ``/embed_all``), checked against each text run
alone through the embedder's ``forward`` with every layer's states: the pooled layer's states of
every token, batched as alone (padding does not leak), the last row what last-token pooling
returns, and Token Prepending's placeholder and spliced token ids counted as the model sees them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import PAPER, TEXTS, make_model

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.results import TokenStates
from kv_embeddings_integrations.core.running.inputs import TokenIds

MIXED = [text * (1 + i % 3) for i, text in enumerate(TEXTS * 2)]


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


def alone(embedder, text: str) -> np.ndarray:
    """The slow reference: the text by itself through ``forward`` (re-routing and Token Prepending
    as configured), every layer's states kept; the pooled layer's, the last one after the final norm."""
    (encoded,) = embedder.tokenize([text])
    out = embedder.forward(embedder.collate([encoded]), output_hidden_states=True)
    if embedder.output_layer == embedder.num_layers - 1:
        hidden = out.last_hidden_state
    else:
        hidden = out.hidden_states[embedder.output_layer + 1]
    assert hidden.shape[1] == len(encoded)
    return hidden[0].float().numpy()


@pytest.mark.parametrize(
    "options",
    [
        dict(PAPER, layers=[1, 2]),  # mean_last pooling of the last layer, re-routed
        {"method": "tp", "postprocess": "none", "lexical": "none"},  # placeholder; an inner layer, no norm
        dict(PAPER, layers=[1], output_layer=-2),
        dict(PAPER, layers=[1, 2], batching="packed"),
    ],
    ids=["kv", "tp", "inner-layer", "packed"],
)
def test_states_are_each_text_alone_at_the_pooled_layer(model, tokenizer, options):
    embedder = KVEmbedder(model, tokenizer, max_length=48, batch_size=4, **options)
    result = embedder.embed_tokens(MIXED)
    assert isinstance(result, TokenStates) and len(result) == len(MIXED)
    lengths = [len(e) for e in embedder.tokenize(MIXED)]
    assert result.token_counts == tuple(lengths) and result.total_tokens == sum(lengths)
    for text, states in zip(MIXED, result.states, strict=True):
        assert states.dtype == np.float32 and states.shape[1] == embedder.hidden_size
        np.testing.assert_allclose(states, alone(embedder, text), atol=1e-5)
    # Batched as one at a time.
    singles = [embedder.embed_tokens([text], batch_size=1).states[0] for text in MIXED]
    for batched, single in zip(result.states, singles, strict=True):
        np.testing.assert_allclose(batched, single, atol=1e-5)


@pytest.mark.parametrize("method", ["kv", "prompteol", "tp"])
def test_pooling_the_states_gives_the_raw_vector(model, tokenizer, method):
    embedder = KVEmbedder(model, tokenizer, method=method, layers=[1], postprocess="none", lexical="none")
    states = embedder.embed_tokens(TEXTS).states
    vectors = embedder.embed(TEXTS, normalize=False, postprocess=False).vectors
    if embedder.pooling == "last":
        pooled = [s[-1] for s in states]
    else:
        assert embedder.pooling == "mean_last" and embedder.mean_scope == "all"
        pooled = [(s.mean(axis=0) + s[-1]) / 2 for s in states]
    np.testing.assert_allclose(np.stack(pooled), vectors, atol=1e-5)


def test_the_placeholder_is_one_of_the_tokens(model, tokenizer):
    embedder = KVEmbedder(model, tokenizer, method="tp", postprocess="none", lexical="none")
    plain = KVEmbedder(model, tokenizer, method="prompteol", postprocess="none", lexical="none")
    with_placeholder = embedder.embed_tokens(TEXTS).token_counts
    assert with_placeholder == tuple(n + 1 for n in plain.embed_tokens(TEXTS).token_counts)


def test_token_ids_give_their_spliced_sequence(model, tokenizer):
    embedder = KVEmbedder(model, tokenizer, layers=[1, 2], max_length=48, **PAPER)
    ids = [200, 17, 5, 301, 42]
    item = TokenIds(ids, tokenizer.decode(ids))
    (encoded,) = embedder.tokenize([item])
    assert encoded.input_ids[encoded.text_start : encoded.text_end] == ids
    result = embedder.embed_tokens([item, TEXTS[1]])
    assert result.token_counts[0] == len(encoded)
    np.testing.assert_allclose(result.states[0], alone(embedder, item), atol=1e-5)


def test_long_texts_are_cut_and_flagged(model, tokenizer):
    embedder = KVEmbedder(model, tokenizer, layers=[1, 2], max_length=32, **PAPER)
    result = embedder.embed_tokens([TEXTS[0] * 20, TEXTS[2]])
    assert result.truncated == (True, False)
    assert result.token_counts[0] == 32
    np.testing.assert_allclose(result.states[0], alone(embedder, TEXTS[0] * 20), atol=1e-5)


def test_the_inputs_are_checked(model, tokenizer):
    embedder = KVEmbedder(model, tokenizer, layers=[1], **PAPER)
    assert len(embedder.embed_tokens([])) == 0
    one = embedder.embed_tokens(TEXTS[0])  # one string: one entry
    assert len(one) == 1
    query = embedder.embed_tokens([TEXTS[0]], prompt_name="query").states[0]
    assert query.shape != one.states[0].shape or not np.allclose(query, one.states[0])
    with pytest.raises(TypeError, match=r"texts\[1\] is None"):
        embedder.embed_tokens(["ok", None])
    with pytest.raises(ValueError, match="batch_size"):
        embedder.embed_tokens(["ok"], batch_size=0)
    with pytest.raises(ValueError, match="unknown prompt name"):
        embedder.embed_tokens(["ok"], prompt_type="summary")
    assert torch.is_grad_enabled()  # no state left behind by the pass
