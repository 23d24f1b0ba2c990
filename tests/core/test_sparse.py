"""Sparse lexical vectors (PromptReps-style) from the dense vectors' own forward pass, against a slow
reference written here: each text alone, re-routed by hand, next-token logits through the LM head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TEXTS, make_model
from reference import reference_hidden_states
from transformers import LlamaConfig, LlamaModel

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.outputs import fusion
from kv_embeddings_integrations.core.outputs.sparse import SparseVectors

MIXED = ["a cat sat on the mat", "dogs", "the quick brown fox jumps over the lazy dog and the cat"] + TEXTS[:3]


def _reference(model, embedder: KVEmbedder, text: str, prompt_type: str = "document") -> dict[int, float]:
    """PromptReps by hand: the final-norm state at the last position of the prompted text alone,
    times the LM head, soft-capped as the model does, log(1 + relu); kept for the text's token ids."""
    encoded = embedder.tokenize([text], prompt_type)[0]
    hidden = reference_hidden_states(model, encoded.input_ids, embedder.layers, embedder.config.bias)
    with torch.no_grad():
        logits = model.get_output_embeddings().weight.double() @ hidden[-1].double()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    weights = torch.log1p(torch.relu(logits))
    ids = set(encoded.input_ids[encoded.text_start : encoded.text_end])
    return {i: float(weights[i]) for i in ids if weights[i] > 0}


@pytest.mark.parametrize(
    ("family", "method"), [("llama", "kv"), ("qwen3", "kv_pcot"), ("gemma2", "kv"), ("mistral", "kv_prompteol")]
)
def test_sparse_vectors_equal_the_reference_text_by_text(tokenizer, family, method):
    model = make_model(family)
    embedder = KVEmbedder(model, tokenizer, method=method, layers=[1, 2], bias=1.5, postprocess="none", lexical="none")
    got = embedder.encode_sparse(MIXED).to_dicts()  # one padded batch
    for text, row in zip(MIXED, got, strict=True):
        expected = _reference(model, embedder, text)
        assert row.keys() == expected.keys(), text
        np.testing.assert_allclose([row[i] for i in expected], list(expected.values()), rtol=1e-4, atol=1e-5)


def test_query_side_uses_the_query_prompt(tokenizer):
    model = make_model("llama")
    embedder = KVEmbedder(model, tokenizer, method="kv", layers=[1], postprocess="none", lexical="none")
    got = embedder.encode_sparse(MIXED[:2], prompt_type="query").to_dicts()
    for text, row in zip(MIXED[:2], got, strict=True):
        expected = _reference(model, embedder, text, "query")
        assert row.keys() == expected.keys()
        np.testing.assert_allclose([row[i] for i in expected], list(expected.values()), rtol=1e-4, atol=1e-5)


def test_dense_and_sparse_come_from_one_pass(tokenizer, monkeypatch):
    embedder = KVEmbedder(
        make_model("qwen3"), tokenizer, method="kv", layers=[1, 2], postprocess="none", lexical="none"
    )
    dense_only = embedder.encode(MIXED)
    passes = []
    original = embedder.runner.model_forward
    monkeypatch.setattr(
        embedder.runner, "model_forward", lambda batch, **kw: passes.append(batch) or original(batch, **kw)
    )
    result = embedder.embed(MIXED, sparse=True, batch_size=2)
    assert len(passes) == 3  # as many forward passes as without sparse vectors: 6 texts, 2 per batch
    np.testing.assert_allclose(result.vectors, dense_only, atol=1e-6)  # the dense vectors are unchanged
    assert len(result.sparse) == len(MIXED) and result.sparse.vocab_size == embedder.vocab_size
    # Only the text's own tokens, each once; none of the prompt's.
    for text, ids in zip(MIXED, result.sparse.indices, strict=True):
        encoded = embedder.tokenize([text])[0]
        assert set(ids.tolist()) <= set(encoded.input_ids[encoded.text_start : encoded.text_end])
        assert len(set(ids.tolist())) == len(ids) and (np.diff(ids) > 0).all()


def test_long_texts_in_pieces_keep_each_tokens_largest_weight(tokenizer):
    model = make_model("llama")
    long_text = " ".join(TEXTS * 3)
    chunked = KVEmbedder(
        model, tokenizer, method="kv", layers=[1], max_length=40, long_text="chunk_mean", postprocess="none"
    )
    pieces = chunked._prompt_tokenizer.split(long_text, chunked.template())
    assert len(pieces) > 1
    alone = chunked.encode_sparse(pieces).to_dicts()
    expected: dict[int, float] = {}
    for piece in alone:
        for token, weight in piece.items():
            expected[token] = max(expected.get(token, 0.0), weight)
    got = chunked.encode_sparse([long_text]).to_dicts()[0]
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[t] for t in expected], list(expected.values()), rtol=1e-5, atol=1e-6)


def test_empty_inputs_and_a_model_without_its_head(tokenizer):
    embedder = KVEmbedder(make_model("llama"), tokenizer, method="kv", layers=[1], postprocess="none", lexical="none")
    nothing = embedder.embed([], sparse=True)
    assert len(nothing.sparse) == 0 and nothing.sparse.vocab_size == embedder.vocab_size
    config = LlamaConfig(**{**make_model("llama").config.to_dict(), "tie_word_embeddings": False})
    base = KVEmbedder(LlamaModel(config).eval(), tokenizer, method="kv", layers=[1], postprocess="none", lexical="none")
    with pytest.raises(ValueError, match="sparse vectors need the model's LM head"):
        base.encode_sparse(["a cat"])
    assert base.encode(["a cat"]).shape == (1, config.hidden_size)  # dense vectors need no head


def test_sparse_vectors_convert_and_score_exactly(tokenizer):
    embedder = KVEmbedder(
        make_model("qwen3"), tokenizer, method="kv", layers=[1, 2], postprocess="none", lexical="none"
    )
    docs, queries = embedder.encode_sparse(MIXED), embedder.encode_sparse(["a cat", "fox"], prompt_type="query")
    assert SparseVectors.from_dicts(docs.to_dicts(), docs.vocab_size).to_dicts() == docs.to_dicts()
    csr = docs.to_csr()
    assert csr.shape == (len(MIXED), embedder.vocab_size)
    scores = fusion.sparse_scores(queries, docs)
    for q, query in enumerate(queries.to_dicts()):
        for d, doc in enumerate(docs.to_dicts()):
            assert scores[q, d] == pytest.approx(sum(w * doc.get(t, 0.0) for t, w in query.items()), rel=1e-5)
