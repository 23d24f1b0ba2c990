"""Results shipped with the package: found before anything is computed, keyed exactly like the user
cache, and (slow) equal to what a first load of the bundled model computes today."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import CORPUS, TEXTS, make_model
from safetensors import safe_open

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core import cache, identity
from kv_embeddings_integrations.core.calibration import builtin_calibration_texts
from kv_embeddings_integrations.core.fitting import layer_selection, postprocessing, ranges
from kv_embeddings_integrations.core.model.bundled import bundled_model_dir
from kv_embeddings_integrations.core.outputs import lexical

TEXTS_40 = [f"{a} {b}" for a in CORPUS for b in TEXTS]
OPTIONS = dict(method="kv_pcot", calibration_texts=TEXTS_40, postprocess="center", postprocess_texts=TEXTS_40)


def _files(folder) -> list:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


def _refuse(*args, **kwargs):
    raise AssertionError("computed although a shipped result exists")


def test_a_shipped_result_is_read_before_anything_is_computed(tokenizer, tmp_path, monkeypatch):
    model = make_model("llama")
    # What a first load computes, in one cache, becomes the "shipped" folder...
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "first"))
    first = KVEmbedder(model, tokenizer, **OPTIONS)
    shutil.copytree(tmp_path / "first", tmp_path / "shipped")
    monkeypatch.setattr(cache, "shipped_dir", lambda: tmp_path / "shipped")
    # ...and a first load in an empty cache reads it, computes nothing and writes nothing.
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "empty"))
    with monkeypatch.context() as patches:
        patches.setattr(layer_selection, "layerwise_dimensions", _refuse)
        patches.setattr(postprocessing, "fit", _refuse)
        again = KVEmbedder(model, tokenizer, **OPTIONS)
    assert again.layer_selection.origin == "shipped" and again.layers == first.layers
    np.testing.assert_array_equal(again.postprocessor.mean, first.postprocessor.mean)
    assert not (tmp_path / "empty").exists()
    np.testing.assert_array_equal(again.encode(TEXTS), first.encode(TEXTS))
    # The user's own cache comes first; KV_EMBED_SHIPPED=0 ignores the shipped files.
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "first"))
    assert KVEmbedder(model, tokenizer, **OPTIONS).layer_selection.origin == "cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "other"))
    monkeypatch.setenv(cache.SHIPPED_ENV, "0")
    assert KVEmbedder(model, tokenizer, **OPTIONS).layer_selection.origin == "computed"
    assert _files(tmp_path / "other") == _files(tmp_path / "first")


def test_results_carry_over_to_the_same_weights_in_another_folder(tokenizer, tmp_path, monkeypatch):
    # A bundled model lives in each user's own cache folder: where it was loaded from is not part
    # of the key, the weights are (so shipped results match every user's copy).
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    model = make_model("llama")
    for folder in ("a", "b"):
        model.save_pretrained(tmp_path / folder)
        tokenizer.save_pretrained(tmp_path / folder)
    first = KVEmbedder.from_pretrained(str(tmp_path / "a"), **OPTIONS)
    with monkeypatch.context() as patches:
        patches.setattr(layer_selection, "layerwise_dimensions", _refuse)
        patches.setattr(postprocessing, "fit", _refuse)
        moved = KVEmbedder.from_pretrained(str(tmp_path / "b"), **OPTIONS)
    assert moved.layer_selection.origin == "cache" and moved.layers == first.layers
    other = make_model("llama", seed=1)
    other.save_pretrained(tmp_path / "c")
    tokenizer.save_pretrained(tmp_path / "c")
    assert KVEmbedder.from_pretrained(str(tmp_path / "c"), **OPTIONS).layer_selection.origin == "computed"


def test_the_cache_keys_are_built_by_identity_with_the_shipped_fields(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    embedder = KVEmbedder(make_model("llama"), tokenizer, **OPTIONS)
    selection_key = identity.layer_selection_key(embedder, TEXTS_40, embedder.resolved.selection_rule)
    assert embedder.layer_selection.key == selection_key
    fit_key = identity.postprocessing_key(embedder, TEXTS_40)
    assert postprocessing.load(postprocessing.cache_path(fit_key), fit_key) is not None
    # Shipped files are found by the digest of these fields: renaming or adding one orphans them.
    model = ["dtype", "model_class", "revision", "weights"]
    texts = ["num_texts", "texts_sha256"]
    assert sorted(selection_key) == sorted(["estimator_version", *model, "template", "max_length", *texts, "rule"])
    assert sorted(fit_key) == sorted(
        ["version", "kind", "dimensions", *model, "config", "templates", "layers", "max_length", *texts]
    )
    assert set(fit_key["config"]) == set(embedder.config.to_dict()) - {
        "task",
        "batch_size",
        "batching",  # packed rows give the padded vectors: the shipped fits hold for both
        "max_tokens_per_batch",
        "calibration_texts",
        "selection",
        "postprocess_texts",
        # The lexical half is appended after the fit: the shipped fits hold with or without it.
        "lexical",
        "lexical_dim",
        "lexical_weight",
        "lexical_texts",
    }


def _manifest() -> list[dict]:
    return json.loads((cache.shipped_dir() / "manifest.json").read_text())


def _shipped_key(path) -> dict:
    if path.suffix == ".json":
        return json.loads(path.read_text())["key"]
    with safe_open(str(path), framework="numpy") as f:
        return json.loads(f.metadata()["key"])


def test_every_shipped_file_is_listed_named_by_its_key_and_readable():
    entries = _manifest()
    folder = cache.shipped_dir()
    assert {e["file"] for e in entries} == {p.as_posix() for p in _files(folder) if p.name != "manifest.json"}
    # The bundled models, in both dtypes, for the default (layers and centering) and the paper preset.
    for model in ("smollm2-135m", "gemma3-270m"):
        for dtype in ("float32", "bfloat16"):
            kinds = {(e["preset"], e["kind"]) for e in entries if e["model"] == model and e["dtype"] == dtype}
            assert {
                ("default", "layer_selection"),
                ("default", "postprocessing"),
                ("default", "quantization"),
                ("similarity", "quantization"),
                ("paper", "layer_selection"),
            } <= kinds
        assert any(e["model"] == model and e["kind"] == "lexical" for e in entries), model
    for entry in entries:
        path = folder / entry["file"]
        key = _shipped_key(path)
        assert path.stem == cache.key_digest(key)  # found by the same digest as the user cache
        if entry["kind"] == "lexical":
            # Token statistics: the tokenizer's, whatever the dtype (one file serves both).
            found = cache.read_keyed_tensors(path, key, lexical.LexicalStatistics.from_tensors, "lexical")
            assert found is not None and found.texts == key["num_texts"] == 1000
            continue
        assert key["dtype"] == f"torch.{entry['dtype']}"
        if entry["kind"] == "layer_selection":
            layers = json.loads(path.read_text())["layers"]
            assert layers == entry["layers"]
        elif entry["kind"] == "quantization":
            assert key["layers"] == entry["layers"] and ranges.load(path, key) is not None
        else:
            assert key["layers"] == entry["layers"] and postprocessing.load(path, key) is not None


@pytest.mark.slow
def test_the_shipped_centering_of_the_default_equals_a_recomputation(tmp_path, monkeypatch):
    # A first load in an empty cache reads both the layers and the centering from the package:
    # nothing computed, nothing written. (The converted model is the user cache's, as the other
    # slow tests use it.)
    (tmp_path / "models").symlink_to(bundled_model_dir("smollm2-135m").parent, target_is_directory=True)
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    embedder = KVEmbedder.from_pretrained("smollm2-135m", dtype="float32")
    assert embedder.layer_selection.origin == "shipped"
    assert not (tmp_path / "layer_selection").exists() and not (tmp_path / "postprocessing").exists()
    # So do the lexical statistics of the default's lexical half, and they are what counting gives.
    assert not (tmp_path / "lexical").exists()
    texts = [t.lower() for t in builtin_calibration_texts()]
    counted = lexical.fit_statistics(
        embedder.tokenizer(texts, add_special_tokens=False)["input_ids"], embedder.vocab_size
    )
    assert embedder.lexical.statistics.digest() == counted.digest()
    # The int8 ranges ship too: the same ones on every machine, nothing fitted or written.
    assert embedder.quantization_ranges.low.shape == (embedder.dimension,)
    assert not (tmp_path / "quantization").exists()
    # The shipped layer choice follows from its stored curve (checked on every read); the fit is
    # recomputed now, by the code a load without the shipped file runs: the embedder's vectors of
    # the 1000 built-in texts, before post-processing, and their mean.
    vectors = embedder.embed(builtin_calibration_texts(), postprocess=False).vectors
    recomputed = postprocessing.fit(vectors, "center").mean
    # float32 sums may round differently on another CPU: close, not bit for bit.
    np.testing.assert_allclose(recomputed, embedder.postprocessor.mean, rtol=0, atol=2e-5)
