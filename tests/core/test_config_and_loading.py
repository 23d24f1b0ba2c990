"""Configuration and loading: ``EmbedderConfig`` and ``LoadOptions`` validation and equivalent
spellings, ``from_pretrained`` (local folders, accelerate dispatch, option sorting, remote code only
when asked), and the method resolved once into one frozen value."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from helpers import PAPER, TEXTS, make_model

from kv_embeddings_integrations import EmbedderConfig, KVEmbedder, LoadOptions


def test_config_round_trip_and_validation(tokenizer):
    config = EmbedderConfig(method="kv", layers=[3, 1, 1], bias=2, pooling="last", prompts={"query": "Q: {text}"})
    assert config.layers == [1, 3] and config.bias == 2.0
    assert EmbedderConfig.from_dict(config.to_dict()) == config
    embedder = KVEmbedder(make_model("llama"), tokenizer, config, bias=0.5, **PAPER)
    assert embedder.config.bias == 0.5 and embedder.config.layers == [1, 3]
    for bad in (
        {"method": "bogus"},
        {"layers": []},
        {"layers": [-1]},
        {"layers": "middle"},
        {"pooling": "max"},
        {"bias": "high"},
        {"prompts": {"document": "no placeholder"}},
        {"prompts": {"": "{text}"}},
        {"max_length": 0},
    ):
        with pytest.raises(ValueError):
            EmbedderConfig(**bad)
    with pytest.raises(ValueError, match="unknown embedder option"):
        EmbedderConfig.from_dict({"methd": "kv"})


def test_from_pretrained_local_dir_and_accelerate_dispatch(model_dir):
    plain = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], device="cpu", **PAPER)
    dispatched = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], device_map="auto", **PAPER)
    assert plain.name == str(model_dir) and plain.device.type == "cpu"
    assert plain.model.dtype == torch.float32
    np.testing.assert_allclose(dispatched.encode(TEXTS), plain.encode(TEXTS), atol=1e-5)
    half = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], dtype="bfloat16", **PAPER)
    assert half.model.dtype == torch.bfloat16
    assert np.isfinite(half.encode(TEXTS)).all()
    with pytest.raises(ValueError, match="dtype must be"):
        KVEmbedder.from_pretrained(str(model_dir), dtype="float33", **PAPER)


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


@pytest.mark.timing
def test_remote_code_runs_only_when_asked(model_dir, monkeypatch):
    seen: list[tuple[str, object]] = []
    for name in ("AutoTokenizer", "AutoModel"):
        auto = getattr(transformers, name)  # patched on the class, so whoever loads is seen
        original = auto.from_pretrained.__func__

        def spy(cls, *args, _name=name, _original=original, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code")))
            return _original(cls, *args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(spy))
    KVEmbedder.from_pretrained(str(model_dir), layers=[1], **PAPER)
    assert seen == [("AutoTokenizer", False), ("AutoModel", False)]
    seen.clear()
    KVEmbedder.from_pretrained(str(model_dir), layers=[1], trust_remote_code=True, **PAPER)
    assert seen == [("AutoTokenizer", True), ("AutoModel", True)]
