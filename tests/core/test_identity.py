"""The embedder's identity (``core/identity.py``): what changes the vectors tells two embedders
apart; a preset's name, the causal-LM wrapper and a bfloat16 load of the same weights do not."""

from __future__ import annotations

import pytest

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.identity import EmbedderMismatchError, check_identity, identity_fingerprint

# A tiny random model: explicit layers keep the test independent of layer selection's choice.
OPTIONS = {"layers": [1, 2]}


def test_identity_tells_apart_what_changes_the_vectors(model_dir, tmp_path):
    base = KVEmbedder.from_pretrained(str(model_dir), **OPTIONS)
    record = base.identity()
    check_identity(record, KVEmbedder.from_pretrained(str(model_dir), **OPTIONS).identity())
    changes = {
        "templates": {"prompts": {"query": "Q: {text}"}},
        "layers": {"layers": [0, 1]},
        "bias": {"bias": 0.5},
        "pooling": {"pooling": "mean"},
        "mean_scope": {"pooling": "mean", "mean_scope": "text"},
        "output_layer": {"output_layer": -2, "layers": [1]},
        "token_prepending": {"token_prepending": True},
        "postprocess": {"postprocess": "none"},
        "dimension": {"postprocess": "pca", "dimensions": 16},
    }
    for field, options in changes.items():
        other = KVEmbedder.from_pretrained(str(model_dir), **{**OPTIONS, **options}).identity()
        with pytest.raises(EmbedderMismatchError, match=rf"{field}(\[.*\])?: stored"):
            check_identity(record, other, where="the test store")
    with pytest.raises(EmbedderMismatchError, match="normalize: stored true, now false"):
        check_identity(record, base.identity(normalize=False))
    # Other weights: another seed of the same architecture.
    from helpers import make_model, make_tokenizer

    other_weights = KVEmbedder(make_model("llama", seed=1), make_tokenizer(), **OPTIONS).identity()
    with pytest.raises(EmbedderMismatchError, match="weights: stored"):
        check_identity(record, other_weights)


def test_identity_compares_what_a_preset_resolves_to_not_its_name(model_dir):
    # The compression prompt without re-routing, named two ways: the same vectors.
    prompt = KVEmbedder.from_pretrained(str(model_dir), method="prompt").identity()
    kv_off = KVEmbedder.from_pretrained(str(model_dir), method="kv", reroute=False).identity()
    assert (prompt["method"], kv_off["method"]) == ("prompt", "kv")
    check_identity(prompt, kv_off)
    # A causal-LM wrapper and the base model it holds: the same decoder weights.
    from helpers import make_model, make_tokenizer

    causal = make_model("llama")
    assert (
        KVEmbedder(causal, make_tokenizer(), **OPTIONS).identity()["weights"]
        == (KVEmbedder(causal.model, make_tokenizer(), **OPTIONS).identity()["weights"])
    )


def test_identity_ignores_the_dtype_the_same_weights_were_loaded_in(model_dir):
    f32 = KVEmbedder.from_pretrained(str(model_dir), dtype="float32", **OPTIONS).identity()
    bf16 = KVEmbedder.from_pretrained(str(model_dir), dtype="bfloat16", **OPTIONS).identity()
    assert (f32["dtype"], bf16["dtype"]) == ("float32", "bfloat16")
    check_identity(f32, bf16)
    assert identity_fingerprint(f32) == identity_fingerprint(bf16) == f32["fingerprint"]
    # float16 rounds a float32 checkpoint differently: refused, with the reason.
    f16 = KVEmbedder.from_pretrained(str(model_dir), dtype="float16", **OPTIONS).identity()
    with pytest.raises(EmbedderMismatchError, match="embedded in float16 and the model is now loaded in float32"):
        check_identity(f16, f32)
