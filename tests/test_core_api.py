"""The public core API every front end builds on: results with token counts, layer states,
selection on a built embedder, typed load options and the sharing key, the optional-dependency
registry, and the old import paths."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from helpers import PAPER, TEXTS, make_model, tiny_model_dir

from kv_embeddings_integrations import EmbedResult, KVEmbedder, LoadOptions
from kv_embeddings_integrations.core import extras
from kv_embeddings_integrations.core.method import layer_selection
from kv_embeddings_integrations.integrations import adapter

LONG = " ".join(TEXTS * 6)


@pytest.fixture
def embedder(tokenizer):
    return KVEmbedder(make_model("llama"), tokenizer, layers=[1, 2], max_length=48, **PAPER)


def test_embed_reports_each_texts_tokens_and_truncation(embedder):
    texts = [TEXTS[0], LONG, ""]
    result = embedder.embed(texts, prompt_type="query")
    assert isinstance(result, EmbedResult) and len(result) == 3
    # Token counts are the prompted sequences the model saw (after truncation), padding excluded.
    assert result.token_counts == tuple(len(e) for e in embedder.tokenize(texts, "query"))
    assert result.truncated == (False, True, False) and result.num_truncated == 1
    assert result.pieces == (1, 1, 1) and result.total_tokens == sum(result.token_counts)
    assert result.token_counts[1] == 48  # cut to max_length, prompt kept
    with pytest.warns(UserWarning, match="1 of 3 texts were longer than max_length=48"):
        vectors = embedder.encode(texts, prompt_type="query")
    np.testing.assert_array_equal(vectors, result.vectors)  # encode is embed's vectors


def test_embed_of_one_string_and_of_nothing(embedder):
    one = embedder.embed(TEXTS[0])
    assert one.vectors.shape == (1, 64) and one.token_counts == (len(embedder.tokenize([TEXTS[0]])[0]),)
    np.testing.assert_array_equal(one.vectors[0], embedder.encode(TEXTS[0]))
    empty = embedder.embed([])
    assert empty.vectors.shape == (0, 64) and empty.total_tokens == 0


def test_chunk_mean_counts_every_piece(tokenizer):
    chunked = KVEmbedder(make_model("llama"), tokenizer, layers=[1, 2], max_length=48, long_text="chunk_mean", **PAPER)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is truncated: the long text is split
        result = chunked.embed([LONG, TEXTS[0]])
    pieces = chunked._prompt_tokenizer.split(LONG, chunked.template())  # the splitter, on purpose
    assert result.pieces == (len(pieces), 1) and result.num_split == 1 and result.num_truncated == 0
    assert result.token_counts[0] == sum(len(e) for e in chunked.tokenize(pieces))


def test_result_slices_and_concatenates():
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = EmbedResult(vectors, (5, 6, 7), (False, True, False), (1, 1, 2))
    tail = result[1:]
    assert tail.token_counts == (6, 7) and tail.num_truncated == 1 and tail.num_split == 1
    joined = EmbedResult.concatenate([result[:1], tail])
    np.testing.assert_array_equal(joined.vectors, vectors)
    assert joined.token_counts == result.token_counts
    with pytest.raises(ValueError, match="one count, flag and piece count per vector row"):
        EmbedResult(vectors, (1,), (False,), (1,))
    with pytest.raises(TypeError, match="sliced by a slice"):
        result[0]


async def test_concurrent_requests_learn_their_own_usage_and_truncation(embedder):
    # Both requests land in one coalesced forward pass; each gets its own texts' counts back.
    short, long = await asyncio.gather(
        embedder.aembed([TEXTS[0], TEXTS[2]], prompt_type="query"), embedder.aembed([LONG], prompt_type="query")
    )
    assert sum(embedder._coalescer.batch_sizes) == 3  # the coalescer's record, on purpose
    assert short.truncated == (False, False) and long.truncated == (True,)
    assert short.token_counts == tuple(len(e) for e in embedder.tokenize([TEXTS[0], TEXTS[2]], "query"))
    np.testing.assert_allclose(long.vectors[0], embedder.embed(LONG, prompt_type="query").vectors[0], atol=1e-6)
    # aencode warns in its own caller, only for its own texts.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        await embedder.aencode([TEXTS[0]])
    with pytest.warns(UserWarning, match="1 of 1 texts") as caught:
        await embedder.aencode([LONG])
    assert caught[0].filename == __file__  # the caller's line, not the library's
    assert embedder.submit_embed([LONG, TEXTS[0]]).result(10).truncated == (True, False)


def test_a_warning_turned_error_fails_the_future_instead_of_hanging(embedder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        future = embedder.submit([LONG])
        with pytest.raises(UserWarning, match="were truncated"):
            future.result(10)


def test_layer_states_are_each_layers_last_token(tokenizer):
    embedder = KVEmbedder(make_model("qwen3"), tokenizer, layers=[1], **PAPER)
    states = embedder.layer_states(TEXTS[:3])
    assert states.shape == (3, 4, 64) and states.dtype == torch.float32
    for row, encoded in enumerate(embedder.tokenize(TEXTS[:3])):
        alone = embedder.forward(embedder.collate([encoded]), output_hidden_states=True, layers=[])
        for layer in range(4):
            torch.testing.assert_close(states[row, layer], alone.hidden_states[layer + 1][0, -1], atol=1e-5, rtol=1e-5)
    # Re-routed states differ from layer 1 on, not before.
    rerouted = embedder.layer_states(TEXTS[:3], reroute=True)
    torch.testing.assert_close(rerouted[:, 0], states[:, 0])
    assert not torch.allclose(rerouted[:, 3], states[:, 3])


def test_selection_runs_on_a_built_embedder_through_public_methods(tokenizer, monkeypatch):
    seen = []
    real = KVEmbedder.layer_states

    def spy(self, texts, **kwargs):
        # Everything a front end could use already exists when selection runs.
        seen.append((self.tokenizer is tokenizer, callable(self.embed), self.layers, kwargs.get("reroute", False)))
        return real(self, texts, **kwargs)

    monkeypatch.setattr(KVEmbedder, "layer_states", spy)
    calibration = [f"{a} {b}" for a in TEXTS for b in TEXTS]
    embedder = KVEmbedder(make_model("llama"), tokenizer, calibration_texts=calibration, **PAPER)
    assert seen == [(True, True, [], False)]  # one call, plain (no layers re-routed yet)
    assert embedder.layers == embedder.layer_selection.layers


def test_load_options_normalise_equivalent_spellings(model_dir, monkeypatch):
    monkeypatch.chdir(model_dir.parent)
    relative = LoadOptions(model=model_dir.name, dtype=torch.bfloat16, device=torch.device("cpu"))
    absolute = LoadOptions(model=model_dir, dtype="bfloat16", device="cpu")  # a Path works too
    assert relative.dtype == absolute.dtype == "bfloat16" and relative.device == absolute.device == "cpu"
    assert relative.model == model_dir.name and absolute.model == str(model_dir)  # kept as written...
    assert relative.sharing_key() == absolute.sharing_key()  # ...and one model
    assert hash(absolute) == hash(LoadOptions(model=str(model_dir), dtype="bfloat16", device="cpu"))
    # accelerate's mixed keys, and one device for the whole model, as transformers takes them.
    LoadOptions(model="m", max_memory={0: "20GiB", "cpu": "60GiB"}).sharing_key()
    assert LoadOptions(model="m", device_map=torch.device("cpu")).device_map == "cpu"
    assert LoadOptions(model="m", device_map=0).device_map == 0
    assert LoadOptions(device="cuda").device == LoadOptions(device="cuda:0").device == "cuda:0"
    # Unknown keywords are AutoModel.from_pretrained's; max_memory implies a device map.
    options = LoadOptions(model="m", low_cpu_mem_usage=True, max_memory={0: "1GiB"})
    assert options.extra == {"low_cpu_mem_usage": True} and options.device_map == "auto"
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        # No device given is the best one here, and no dtype the default for it: the same weights.
        assert (
            LoadOptions(model="m").sharing_key() == LoadOptions(model="m", device="cpu", dtype="float32").sharing_key()
        )
    assert (
        LoadOptions(model="m", dtype="float32").sharing_key() != LoadOptions(model="m", dtype="bfloat16").sharing_key()
    )


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"dtype": "bf16"}, "dtype must be a torch dtype"),
        ({"device": "gpu7"}, "is not a torch device"),
        ({"model": ""}, "model must be a hub id"),
        ({"layers": [1]}, "are embedder options"),
    ],
)
def test_load_options_reject_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        LoadOptions(**{"model": "m", **bad})


def test_equivalent_spellings_share_one_model_and_others_do_not():
    path = tiny_model_dir()
    first = adapter.shared_embedder(LoadOptions(model=path, dtype="float32", device="cpu"), _config())
    same = adapter.shared_embedder(path, _config(), {"dtype": torch.float32, "device": torch.device("cpu")})
    assert same is first  # same weights, same options: one embedder
    other_options = adapter.shared_embedder(path, _config(bias=0.5), {"dtype": "float32", "device": "cpu"})
    assert other_options is not first and other_options.model is first.model  # still one model
    other_dtype = adapter.shared_embedder(path, _config(), {"dtype": "bfloat16", "device": "cpu"})
    assert other_dtype.model is not first.model and other_dtype.dtype == torch.bfloat16
    assert first.load_options == LoadOptions(model=path, dtype="float32", device="cpu")


def test_both_adapters_share_one_model_across_spellings():
    from kv_embeddings_integrations import KVEmbedding, KVEmbeddings

    path = tiny_model_dir()
    langchain = KVEmbeddings(model=path, layers=[1, 2], model_kwargs={"dtype": "float32", "device": "cpu"}, **PAPER)
    llama = KVEmbedding(model=path, layers=[1, 2], model_kwargs={"dtype": torch.float32, "device": "cpu"}, **PAPER)
    assert langchain.client is llama.client
    assert langchain.load_options == llama.load_options
    with pytest.raises(ValueError, match="dtype must be a torch dtype"):
        KVEmbeddings(model=path, model_kwargs={"dtype": "bf16"}, **PAPER)


def test_from_pretrained_takes_load_options(model_dir):
    from transformers import AutoConfig

    options = LoadOptions(model=str(model_dir), device="cpu")
    embedder = KVEmbedder.from_pretrained(options, layers=[1], **PAPER)
    assert embedder.load_options == options and embedder.layers == [1]
    with pytest.raises(TypeError, match=r"give \['dtype'\] inside them"):
        KVEmbedder.from_pretrained(options, dtype="float32", **PAPER)
    # A path object as the model, and a transformers config still goes to AutoModel.from_pretrained.
    config = AutoConfig.from_pretrained(model_dir, **PAPER)
    by_path = KVEmbedder.from_pretrained(model_dir, config=config, layers=[1], device="cpu")
    assert by_path.load_options.extra["config"] is config and by_path.name == str(model_dir)


def test_from_pretrained_sorts_options_and_names_an_unknown_one(model_dir):
    embedder = KVEmbedder.from_pretrained(
        str(model_dir), device="cpu", extra={"low_cpu_mem_usage": True}, layers=[1], bias=0.5, **PAPER
    )
    assert embedder.load_options == LoadOptions(model=str(model_dir), device="cpu", low_cpu_mem_usage=True)
    assert embedder.config.bias == 0.5 and embedder.layers == [1]
    # A misspelt option fails before anything loads, naming it and both kinds of valid options.
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['methd'\].*'dtype'.*'method'.*extra="):
        KVEmbedder.from_pretrained("no/such-model", methd="kv")


def test_the_method_is_resolved_once_into_one_frozen_value(tokenizer):
    import dataclasses

    embedder = KVEmbedder(
        make_model("llama"), tokenizer, method="tp", prompts={"query": "Q: {text}"}, postprocess="none"
    )
    resolved = embedder.resolved
    assert (resolved.method, resolved.family, resolved.reroute, resolved.token_prepending) == (
        "tp",
        "prompteol",
        False,
        True,
    )
    assert resolved.query_templates == ("Q: {text}",) and resolved.document_templates == embedder.templates()
    # The embedder's properties, repr and identity all read it.
    assert (embedder.pooling, embedder.output_layer, embedder.prepend_layers) == (
        resolved.pooling,
        resolved.output_layer,
        resolved.prepend_layers,
    )
    assert f"family={resolved.family!r}" in repr(embedder)
    assert embedder.identity()["prompt_family"] == "prompteol" and embedder.identity()["output_layer"] == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolved.pooling = "mean"  # type: ignore[misc]
    # A bad option fails while resolving, before anything runs.
    with pytest.raises(ValueError, match="layers \\[3\\] come after output_layer 1"):
        KVEmbedder(make_model("llama"), tokenizer, output_layer=1, layers=[3], **PAPER)


def _config(**options):
    from kv_embeddings_integrations import EmbedderConfig

    return EmbedderConfig(layers=[1, 2], **options)


def test_every_registered_extra_exists_in_pyproject():
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    declared = pyproject["project"]["optional-dependencies"]
    for name, extra in extras.EXTRAS.items():
        assert name in declared, name
        assert extra.install_command == f"pip install 'kv-embeddings-integrations[{name}]'"


def test_a_missing_extra_names_the_feature_and_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a))
    with pytest.raises(extras.MissingExtraError) as caught:
        extras.require("eval", "kv-embed eval")
    assert str(caught.value) == "kv-embed eval needs scipy:  pip install 'kv-embeddings-integrations[eval]'"
    assert isinstance(caught.value, ModuleNotFoundError)
    extras.require("eval", "only sklearn", ("sklearn",))  # present: no error


def test_ray_missing_gives_the_same_format(monkeypatch):
    import sys

    from kv_embeddings_integrations.parallel import ray_data

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(extras.MissingExtraError, match=r"needs ray:  pip install 'kv-embeddings-integrations\[ray\]'"):
        ray_data.require_ray()


def test_resolve_layers_without_layers_is_empty():
    assert layer_selection.resolve_layers(None, 4) == []
