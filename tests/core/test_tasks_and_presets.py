"""The ``task`` option: one default per use, each a documented method; explicit options win. The
presets: valid options, the default one what the default config runs, ``paper`` the method page's recipe."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import TEXTS, make_model

from kv_embeddings_integrations import PRESETS, EmbedderConfig, KVEmbedder
from kv_embeddings_integrations.core.config import TASK_METHODS
from kv_embeddings_integrations.core.identity import postprocessing_key
from kv_embeddings_integrations.core.prompts import FAMILIES


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


def test_the_task_picks_the_method_and_the_default_is_retrieval():
    assert EmbedderConfig().task == "retrieval" and EmbedderConfig().resolved_method == TASK_METHODS["retrieval"]
    assert TASK_METHODS == {"retrieval": "kv", "similarity": "kv_pcot", "classification": "kv_pcot"}
    assert EmbedderConfig(task="similarity").resolved_method == "kv_pcot"
    assert EmbedderConfig(task="similarity", method="kv_ke").resolved_method == "kv_ke"  # a named method wins
    assert PRESETS["default"]["method"] == "kv" and PRESETS["similarity"]["method"] == "kv_pcot"
    with pytest.raises(ValueError, match="task"):
        EmbedderConfig(task="clustering")


def test_retrieval_keeps_two_prompts_and_symmetric_tasks_use_one(tokenizer):
    model = make_model("llama")
    retrieval = KVEmbedder(model, tokenizer, layers=[1], postprocess="none")
    compress = FAMILIES["compress"].templates
    assert retrieval.templates("query") == compress["query"] != retrieval.templates("document")
    for task in ("similarity", "classification"):
        assert (
            KVEmbedder(model, tokenizer, task=task, layers=[1], postprocess="none").config.resolved_method == "kv_pcot"
        )
        symmetric = KVEmbedder(model, tokenizer, task=task, method="kv", layers=[1], postprocess="none")
        assert symmetric.templates("query") == symmetric.templates("document") == compress["document"]
        np.testing.assert_array_equal(
            symmetric.encode(TEXTS, prompt_type="query"), symmetric.encode(TEXTS, prompt_type="document")
        )
        assert symmetric.identity()["templates"]["query"] == symmetric.identity()["templates"]["document"]


def test_a_task_and_its_method_share_the_cached_fit_and_identity(tokenizer):
    model = make_model("llama")
    by_task = KVEmbedder(model, tokenizer, task="similarity", layers=[1])
    # The retrieval task (the default) appends a lexical half to any method; the similarity task does not.
    by_method = KVEmbedder(model, tokenizer, method="kv_pcot", layers=[1], lexical="none")
    texts = [f"text {i}" for i in range(30)]
    assert postprocessing_key(by_task, texts) == postprocessing_key(by_method, texts)
    assert by_task.postprocessor is not None
    np.testing.assert_array_equal(by_task.postprocessor.mean, by_method.postprocessor.mean)
    # Pretended CoT has one prompt for both sides: the same vectors and identity either way.
    np.testing.assert_array_equal(
        by_task.encode(TEXTS, prompt_type="query"), by_method.encode(TEXTS, prompt_type="query")
    )
    assert by_task.identity() == by_method.identity() and by_task.identity()["method"] == "kv_pcot"
    # The compression prompt has two: a symmetric task gives queries the document one, and the
    # identity says so.
    asymmetric = KVEmbedder(model, tokenizer, method="kv", layers=[1], postprocess="none", lexical="none")
    symmetric = KVEmbedder(model, tokenizer, task="similarity", method="kv", layers=[1], postprocess="none")
    assert asymmetric.identity()["method"] == symmetric.identity()["method"] == "kv"
    assert asymmetric.identity()["fingerprint"] != symmetric.identity()["fingerprint"]
    np.testing.assert_array_equal(symmetric.encode(TEXTS, prompt_type="query"), asymmetric.encode(TEXTS))


def test_repr_and_round_trip_name_the_task(tokenizer):
    embedder = KVEmbedder(make_model("llama"), tokenizer, task="classification", layers=[1], postprocess="none")
    assert "task='classification', method='kv_pcot'" in repr(embedder)
    config = EmbedderConfig(task="similarity")
    assert EmbedderConfig.from_dict(config.to_dict()) == config and config.to_dict()["method"] is None


def test_presets_are_valid_and_paper_is_the_method_md_recipe(model, tokenizer):
    from kv_embeddings_integrations import PRESETS

    for options in PRESETS.values():
        EmbedderConfig(**options)
    # The default preset is what the default config runs (the retrieval task's method, centered).
    assert EmbedderConfig(**PRESETS["default"]).vector_options() == EmbedderConfig().vector_options()
    assert EmbedderConfig(**PRESETS["similarity"]).resolved_method == EmbedderConfig(task="similarity").resolved_method
    paper = KVEmbedder(model, tokenizer, layers=[1], **PRESETS["paper"])
    assert (paper.config.method, paper.pooling, paper.output_layer, paper.postprocessor) == ("kv", "mean_last", 3, None)
    assert paper.template() == '"Context: {text}" Compress the Context in one word:'
