"""Label-free post-processing: the fitted transforms against numpy / scikit-learn, the safe cache,
and the embedder that fits and applies them (the adapters: integrations/test_adapters.py)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import TEXTS, make_model

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.config import EmbedderConfig
from kv_embeddings_integrations.core.fitting import postprocessing

FIT_TEXTS = [f"sentence number {i} talks about {topic}" for i in range(12) for topic in ("cats", "rain", "code")]

PCA8 = dict(method="prompteol", postprocess="pca", dimensions=8, postprocess_texts=FIT_TEXTS, lexical="none")


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KV_EMBED_CACHE", str(tmp_path))
    return tmp_path


def _vectors(n=60, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.linspace(3, 0.1, d) + 5.0  # anisotropic, far from the origin
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_center_subtracts_the_mean():
    x = _vectors()
    processor = postprocessing.fit(x, "center")
    np.testing.assert_allclose(processor.mean, x.mean(0), atol=1e-6)
    raw = processor.apply(x, normalize=False)
    np.testing.assert_allclose(raw, x - x.mean(0), atol=1e-6)
    out = processor.apply(x)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_standardize_matches_scikit_learn_standard_scaler():
    from sklearn.preprocessing import StandardScaler

    x = _vectors()
    processor = postprocessing.fit(x, "standardize")
    theirs = StandardScaler().fit(x.astype(np.float64)).transform(x)
    np.testing.assert_allclose(processor.apply(x, normalize=False), theirs, atol=1e-4)
    assert processor.dimensions == x.shape[1]
    out = processor.apply(x)
    np.testing.assert_allclose(out, theirs / np.linalg.norm(theirs, axis=1, keepdims=True), atol=1e-5)


def test_pca_matches_scikit_learn():
    from sklearn.decomposition import PCA

    x = _vectors()
    processor = postprocessing.fit(x, "pca", dimensions=5)
    ours = processor.apply(x, normalize=False)
    theirs = PCA(n_components=5, svd_solver="full").fit(x.astype(np.float64)).transform(x)
    # Axes are defined up to sign.
    signs = np.sign((ours * theirs).sum(0))
    np.testing.assert_allclose(ours * signs, theirs, atol=1e-4)
    assert processor.dimensions == 5 and ours.shape == (60, 5)


def test_whiten_gives_unit_variance_per_axis():
    x = _vectors()
    processor = postprocessing.fit(x, "whiten", dimensions=4)
    out = processor.apply(x, normalize=False)
    np.testing.assert_allclose(out.var(axis=0, ddof=1), 1.0, rtol=1e-3)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)


def test_fit_refuses_too_few_vectors_or_too_many_dimensions():
    with pytest.raises(ValueError, match="at least 20 vectors"):
        postprocessing.fit(_vectors(n=10), "center")
    with pytest.raises(ValueError, match=r"dimensions=50 is more than the fitting vectors span"):
        postprocessing.fit(_vectors(n=30, d=64), "pca", dimensions=50)


def test_dimensions_need_pca_or_whiten():
    with pytest.raises(ValueError, match="dimensions=8 needs postprocess='pca' or 'whiten'"):
        EmbedderConfig(postprocess="center", dimensions=8)


def test_embedder_fits_once_then_reads_the_safe_cache(model, tokenizer, private_cache, monkeypatch):
    embedder = KVEmbedder(model, tokenizer, **PCA8)
    files = list((private_cache / "postprocessing").glob("*.safetensors"))
    assert len(files) == 1 and b"pickle" not in files[0].read_bytes()[:64]
    # The transform is the fit of the embedder's own (pre-processing) vectors of the fitting texts.
    raw = embedder.embed(FIT_TEXTS, postprocess=False).vectors
    expected = postprocessing.fit(raw, "pca", 8).apply(embedder.embed(TEXTS[:3], postprocess=False).vectors)
    np.testing.assert_allclose(np.abs(embedder.encode(TEXTS[:3])), np.abs(expected), atol=1e-5)
    assert embedder.dimension == 8 and embedder.encode(TEXTS[0]).shape == (8,)

    def no_fit(*args, **kwargs):
        raise AssertionError("refitted instead of reading the cache")

    monkeypatch.setattr(postprocessing, "fit", no_fit)
    again = KVEmbedder(model, tokenizer, **PCA8)
    np.testing.assert_array_equal(again.encode(TEXTS[:3]), embedder.encode(TEXTS[:3]))


def test_a_changed_configuration_or_a_corrupt_file_refits(model, tokenizer, private_cache, caplog):
    KVEmbedder(model, tokenizer, method="prompteol", postprocess="center", postprocess_texts=FIT_TEXTS, lexical="none")
    KVEmbedder(model, tokenizer, method="pcot", postprocess="center", postprocess_texts=FIT_TEXTS, lexical="none")
    files = sorted((private_cache / "postprocessing").glob("*.safetensors"))
    assert len(files) == 2
    for f in files:
        f.write_bytes(b"not a safetensors file")
    embedder = KVEmbedder(
        model, tokenizer, method="pcot", postprocess="center", postprocess_texts=FIT_TEXTS, lexical="none"
    )
    assert "ignoring unusable post-processing cache" in caplog.text
    assert embedder.postprocessor is not None and embedder.encode(TEXTS[0]).shape == (64,)


def test_postprocess_false_and_normalize(model, tokenizer):
    embedder = KVEmbedder(
        model, tokenizer, method="prompteol", postprocess="center", postprocess_texts=FIT_TEXTS, lexical="none"
    )
    plain = KVEmbedder(model, tokenizer, method="prompteol", postprocess="none", lexical="none")
    np.testing.assert_array_equal(embedder.embed(TEXTS[:2], postprocess=False).vectors, plain.encode(TEXTS[:2]))
    unnormalised = embedder.encode(TEXTS[:2], normalize=False)
    np.testing.assert_allclose(unnormalised, plain.encode(TEXTS[:2]) - embedder.postprocessor.mean, atol=1e-6)


def test_too_few_fitting_texts_is_a_clear_error(model, tokenizer):
    with pytest.raises(ValueError, match="at least 20 distinct texts to fit"):
        KVEmbedder(model, tokenizer, postprocess="center", postprocess_texts=["a", "b", "a"])


def test_recipe_carries_the_fitted_transform(model, tokenizer, monkeypatch):
    embedder = KVEmbedder(model, tokenizer, **{**PCA8, "postprocess": "whiten", "dimensions": 6})
    monkeypatch.setattr(postprocessing, "load", lambda *a: pytest.fail("rebuilt embedder read the cache"))
    twin = embedder.recipe().build()
    np.testing.assert_array_equal(twin.encode(TEXTS[:3]), embedder.encode(TEXTS[:3]))
