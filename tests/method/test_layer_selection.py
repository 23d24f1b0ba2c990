"""Layer selection: the TwoNN estimator, the selection rule and its window, explicit layers resolved,
the layer states it measures (through the built embedder's public methods), and its cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import CORPUS, PAPER, TEXTS, make_model

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.fitting import layer_selection
from kv_embeddings_integrations.core.fitting.layer_selection import (
    builtin_calibration_texts,
    layerwise_dimensions,
    select_layers,
    twonn_dimension,
)
from kv_embeddings_integrations.core.fitting.subject import Fitting
from kv_embeddings_integrations.core.resolved import resolve_layers

N = 2000
AMBIENT = 120


def _random_rotation(rng, rows: int, cols: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(cols, cols)))
    return q[:rows]


@pytest.mark.parametrize("d", [2, 5])
def test_twonn_on_a_linear_subspace(d):
    rng = np.random.default_rng(d)
    points = rng.uniform(size=(N, d)) @ _random_rotation(rng, d, AMBIENT)
    assert twonn_dimension(points) == pytest.approx(d, rel=0.15)


def test_twonn_on_a_10d_linear_subspace():
    rng = np.random.default_rng(10)
    basis = _random_rotation(rng, 10, AMBIENT)
    gaussian = rng.normal(size=(N, 10)) @ basis
    assert twonn_dimension(gaussian) == pytest.approx(10, rel=0.15)
    # Uniform in a 10-cube, N = 2000: nearest-neighbour distances are a sizeable part of the side,
    # so faces and corners bias TwoNN low (about 8.2-8.7 over seeds; Facco et al. note the same
    # finite-sample effect in high d). Pinned as a known bias rather than hidden by a lucky seed.
    cube = rng.uniform(size=(N, 10)) @ basis
    assert 7.5 <= twonn_dimension(cube) <= 10.5


@pytest.mark.parametrize("d", [2, 5, 10])
def test_twonn_on_a_curved_manifold(d):
    # The unit d-sphere in R^(d+1), uniform, rotated into R^120: curved, no boundary.
    rng = np.random.default_rng(100 + d)
    sphere = rng.normal(size=(N, d + 1))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    points = sphere @ _random_rotation(rng, d + 1, AMBIENT)
    assert twonn_dimension(torch.from_numpy(points)) == pytest.approx(d, rel=0.15)


def test_twonn_ignores_duplicates_and_checks_its_input():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(300, 3))
    with_duplicates = np.concatenate([points, points[:100], points[:10]])
    assert twonn_dimension(with_duplicates) == pytest.approx(twonn_dimension(points))
    with pytest.raises(ValueError, match="at least 20 distinct points, got 19"):
        twonn_dimension(np.repeat(rng.normal(size=(19, 4)), 3, axis=0))
    with pytest.raises(ValueError, match="2-D"):
        twonn_dimension(np.zeros(50))
    with pytest.raises(ValueError, match="NaN"):
        twonn_dimension(np.full((30, 2), np.nan))


@pytest.mark.parametrize(
    "curve,expected",
    [
        # U-shaped over 20 layers: skip 4, minimum at 9, window floor(20/10) = 2 more.
        ([30, 25, 20, 16, 14, 12, 10, 9, 8, 7, 8, 9, 11, 14, 18, 22, 25, 27, 29, 30], [9, 10, 11]),
        # Flat: the first candidate after the skipped layers.
        ([5.0] * 12, [2, 3]),
        # Global minimum inside the skipped 20% (layers 0-5 of 30) is ignored.
        ([1, 1, 1, 1, 1, 1] + [20 - i * 0.5 for i in range(10)] + [30] * 14, [15, 16, 17, 18]),
        # Minimum near the end: the window is clipped to the network.
        ([9, 8, 7, 6, 5, 4, 3, 2, 1, 0.5], [9]),
        # Shallow networks (< 10 layers): a window of one layer.
        ([3, 2, 1, 2], [2]),
        ([4, 3, 5, 6, 7, 8, 9], [1]),
        ([7.0], [0]),
    ],
)
def test_select_layers_rule(curve, expected):
    assert select_layers(curve, len(curve)) == expected


def test_select_layers_options():
    curve = [9, 8, 7, 6, 5, 6, 7, 8, 9, 10, 11, 12]
    assert select_layers(curve, skip_fraction=0.0, window=0) == [4]
    assert select_layers(curve, skip_fraction=0.5, window=3) == [6, 7, 8, 9]
    with pytest.raises(ValueError, match="one dimension per layer"):
        select_layers(curve, 10)
    with pytest.raises(ValueError, match="skip_fraction"):
        select_layers(curve, skip_fraction=1.0)


def test_select_layers_bounds_the_window():
    dims = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0.5]
    assert select_layers(dims, 10, window=1) == [9]
    assert select_layers(dims, 10, window=2, last_layer=6) == [6]
    assert select_layers([9, 1, 8, 7, 6, 5, 4, 3, 2, 1.5], 10, skip_fraction=0.0, window=2, last_layer=6) == [1, 2, 3]
    with pytest.raises(ValueError, match="last_layer"):
        select_layers(dims, 10, last_layer=10)


def test_layers_resolution():
    assert resolve_layers(None, 4) == []
    with pytest.raises(ValueError, match=r"layers \[4\] out of range"):
        resolve_layers([1, 4], 4)


def test_builtin_calibration_texts():
    texts = builtin_calibration_texts()
    assert len(texts) == 1000 and len(set(texts)) > 990
    assert all(isinstance(t, str) and t.strip() for t in texts)


def test_layerwise_dimensions_use_all_layers_of_one_pass(tokenizer):
    embedder = KVEmbedder(make_model("qwen3"), tokenizer, method="prompt")
    texts = [f"{a} {b}" for a in CORPUS for b in TEXTS]
    states = layer_selection.last_token_states(embedder, texts)
    assert states.shape == (len(texts), 4, 64)
    # Each layer's slice is the last-token state of that layer, as a plain forward gives it.
    out = embedder.forward(embedder.collate(embedder.tokenize(texts[:3])), output_hidden_states=True)
    for layer in range(4):
        torch.testing.assert_close(states[:3, layer], out.hidden_states[layer + 1][:, -1])
    dims = layerwise_dimensions(embedder, texts)
    assert len(dims) == 4 and all(d > 0 for d in dims)


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


def test_selection_runs_on_a_plain_runner_never_on_the_half_built_embedder(tokenizer, monkeypatch):
    seen = []
    real = Fitting.layer_states

    def spy(self, texts, **kwargs):
        seen.append((type(self), self.layers, self.runner.plan.layers))
        return real(self, texts, **kwargs)

    def refuse(self, *args, **kwargs):
        raise AssertionError("layer selection called back into the embedder being built")

    monkeypatch.setattr(Fitting, "layer_states", spy)
    monkeypatch.setattr(KVEmbedder, "layer_states", refuse)
    monkeypatch.setattr(KVEmbedder, "embed", refuse)
    calibration = [f"{a} {b}" for a in TEXTS for b in TEXTS]
    embedder = KVEmbedder(make_model("llama"), tokenizer, calibration_texts=calibration, **PAPER)
    assert seen == [(Fitting, (), ())]  # one call, on a runner that re-routes nothing
    assert embedder.layers == embedder.layer_selection.layers
    assert embedder.runner.plan.layers == tuple(embedder.layers)


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KV_EMBED_CACHE", str(tmp_path))
    return tmp_path / "layer_selection"


def _calibration():
    return [f"{a} {b}" for a in CORPUS for b in TEXTS]


def test_auto_layers_are_computed_once_then_cached(tokenizer, cache, monkeypatch):
    model = make_model("llama")
    first = KVEmbedder(model, tokenizer, calibration_texts=_calibration(), **PAPER)
    selection = first.layer_selection
    assert not selection.from_cache and selection.calibration == "user (40 texts)"
    assert first.layers == select_layers(selection.dimensions, 4)
    assert len(list(cache.glob("*.json"))) == 1

    monkeypatch.setattr(layer_selection, "layerwise_dimensions", lambda *a, **k: pytest.fail("recomputed"))
    second = KVEmbedder(model, tokenizer, calibration_texts=_calibration(), **PAPER)
    assert second.layer_selection.from_cache and second.layers == first.layers
    # Explicit layers skip selection entirely.
    assert KVEmbedder(model, tokenizer, layers=[3], **PAPER).layer_selection is None


@pytest.mark.parametrize(
    "change",
    [
        dict(calibration_texts=_calibration()[:-1]),
        dict(prompts={"document": "Summarise: {text}"}),
        dict(selection={"skip_fraction": 0.5}),
        dict(max_length=100),
    ],
)
def test_cache_misses_when_the_key_changes(tokenizer, cache, monkeypatch, change):
    model = make_model("llama")
    KVEmbedder(model, tokenizer, calibration_texts=_calibration(), **PAPER)
    options = {"calibration_texts": _calibration(), **PAPER, **change}
    again = KVEmbedder(model, tokenizer, **options)
    assert not again.layer_selection.from_cache
    assert len(list(cache.glob("*.json"))) == 2


def test_cache_misses_for_other_weights(tokenizer, cache):
    KVEmbedder(make_model("llama", seed=0), tokenizer, calibration_texts=_calibration(), **PAPER)
    other = KVEmbedder(make_model("llama", seed=1), tokenizer, calibration_texts=_calibration(), **PAPER)
    assert not other.layer_selection.from_cache


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda text: text[: len(text) // 2],  # truncated JSON
        lambda text: "not json at all",
        lambda text: json.dumps({**json.loads(text), "layers": [(i + 1) % 4 for i in json.loads(text)["layers"]]}),
        lambda text: json.dumps({**json.loads(text), "key": {"model_class": "Other"}}),  # someone else's entry
        lambda text: json.dumps({**json.loads(text), "dimensions": "oops"}),
    ],
)
def test_corrupt_cache_is_recomputed_and_repaired(tokenizer, cache, corrupt):
    model = make_model("llama")
    good = KVEmbedder(model, tokenizer, calibration_texts=_calibration(), **PAPER).layer_selection
    (path,) = cache.glob("*.json")
    path.write_text(corrupt(path.read_text()))
    again = KVEmbedder(model, tokenizer, calibration_texts=_calibration(), **PAPER).layer_selection
    assert not again.from_cache and again.layers == good.layers
    assert KVEmbedder(model, tokenizer, calibration_texts=_calibration(), **PAPER).layer_selection.from_cache
