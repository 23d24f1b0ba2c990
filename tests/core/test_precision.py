"""Output precision (``core/quantization.py``): sentence-transformers' layouts, int8 / uint8 ranges
fitted once on the post-processing texts and cached, recorded in the identity; each checked against
an explicit element-by-element reference."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from helpers import TEXTS

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.fitting.ranges import ranges_for
from kv_embeddings_integrations.core.identity import EmbedderMismatchError, check_identity
from kv_embeddings_integrations.core.outputs import quantization
from kv_embeddings_integrations.core.outputs.quantization import (
    QuantizationRanges,
    fit_ranges,
    hamming_scores,
    quantize,
)

FIT_TEXTS = [f"calibration text number {i}: {TEXTS[i % len(TEXTS)]}" for i in range(30)]


def _reference_levels(vectors: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    out = np.zeros(vectors.shape, dtype=np.int64)
    for (i, j), value in np.ndenumerate(vectors):
        step = (high[j] - low[j]) / 255.0
        out[i, j] = min(255, max(0, math.floor(float((value - low[j]) / step)))) if step > 0 else 0
    return out


def _reference_bits(vectors: np.ndarray) -> np.ndarray:
    rows = []
    for row in vectors:
        bits = [1 if value > 0 else 0 for value in row] + [0] * (-len(row) % 8)
        rows.append([sum(bit << (7 - k) for k, bit in enumerate(bits[b : b + 8])) for b in range(0, len(bits), 8)])
    return np.array(rows, dtype=np.uint8)


@pytest.fixture(scope="module")
def embedder(model_dir):
    return KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], postprocess_texts=FIT_TEXTS)


def test_quantize_matches_the_element_by_element_reference():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(7, 21)).astype(np.float32)
    ranges = fit_ranges(rng.normal(size=(40, 21)).astype(np.float32))
    levels = _reference_levels(vectors, ranges.low, ranges.high)  # values past the range clip
    np.testing.assert_array_equal(quantize(vectors, "uint8", ranges), levels.astype(np.uint8))
    np.testing.assert_array_equal(quantize(vectors, "int8", ranges), (levels - 128).astype(np.int8))
    bits = _reference_bits(vectors)
    np.testing.assert_array_equal(quantize(vectors, "ubinary"), bits)
    np.testing.assert_array_equal(quantize(vectors, "binary"), (bits.astype(np.int16) - 128).astype(np.int8))
    assert quantize(vectors, "float16").dtype == np.float16 and quantize(vectors, "float32") is not None
    # Dequantized int8 is the lower edge of an in-range value's level.
    inside = np.clip(vectors, ranges.low, ranges.high)
    back = ranges.dequantize(quantize(inside, "int8", ranges), "int8")
    assert np.all((inside - back >= -1e-6) & (inside - back <= ranges.steps + 1e-6))
    with pytest.raises(ValueError, match="precision must be one of float32, float16, int8"):
        quantize(vectors, "int4")
    with pytest.raises(ValueError, match="needs the fitted quantization ranges"):
        quantize(vectors, "int8")


def test_layouts_and_values_are_sentence_transformers():
    quantize_embeddings = pytest.importorskip("sentence_transformers.util.quantization").quantize_embeddings
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(5, 19)).astype(np.float32)
    ranges = fit_ranges(rng.normal(size=(40, 19)).astype(np.float32))
    given = np.stack([ranges.low, ranges.high])
    for precision in ("int8", "uint8", "binary", "ubinary"):
        theirs = quantize_embeddings(vectors, precision=precision, ranges=given)
        np.testing.assert_array_equal(quantize(vectors, precision, ranges), theirs)


def test_hamming_scores_count_differing_bits():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(3, 20)), rng.normal(size=(6, 20))
    expected = -np.array([[int(((x > 0) != (y > 0)).sum()) for y in b] for x in a])
    np.testing.assert_array_equal(hamming_scores(quantize(a, "ubinary"), quantize(b, "ubinary")), expected)
    np.testing.assert_array_equal(hamming_scores(quantize(a, "binary"), quantize(b, "binary"), "binary"), expected)


def test_encode_in_each_precision(embedder):
    floats = embedder.encode(TEXTS)
    # The ranges: the final vectors' per-dimension extremes over the post-processing texts.
    fitted = embedder.encode(FIT_TEXTS)
    np.testing.assert_array_equal(embedder.quantization_ranges.low, fitted.min(axis=0))
    np.testing.assert_array_equal(embedder.quantization_ranges.high, fitted.max(axis=0))
    for precision, dtype in quantization.DTYPES.items():
        out = embedder.encode(TEXTS, precision=precision)
        assert out.dtype == dtype, precision
        assert out.shape == (len(TEXTS), quantization.width(precision, embedder.dimension))
        np.testing.assert_array_equal(out, quantize(floats, precision, embedder.quantization_ranges))
        np.testing.assert_array_equal(embedder.embed(TEXTS, precision=precision).vectors, out)
    one = embedder.encode(TEXTS[0], precision="ubinary")
    assert one.shape == (quantization.width("ubinary", embedder.dimension),)
    assert quantization.bytes_per_vector("int8", 576) == 576 and quantization.bytes_per_vector("binary", 576) == 72
    with pytest.raises(ValueError, match="needs normalize=True and postprocess=True"):
        embedder.encode(TEXTS, precision="int8", normalize=False)
    with pytest.raises(ValueError, match="needs normalize=True and postprocess=True"):
        embedder.embed(TEXTS, precision="uint8", postprocess=False)


def test_ranges_are_cached_and_read_back(embedder, monkeypatch):
    first = embedder.quantization_ranges
    # A new embedder of the same configuration reads them: no forward pass runs.
    again = KVEmbedder(embedder.model, embedder.tokenizer, embedder.config, name=embedder.name)

    def no_pass(*args, **kwargs):
        raise AssertionError("the ranges were fitted again instead of read from the cache")

    monkeypatch.setattr(again.runner, "forward", no_pass)
    read = ranges_for(again, lambda texts: pytest.fail("the ranges were fitted again"))
    np.testing.assert_array_equal(read.low, first.low)
    np.testing.assert_array_equal(read.high, first.high)


def test_the_identity_refuses_other_precisions_and_ranges(embedder):
    floats = embedder.identity()
    assert "quantization" not in floats
    int8 = embedder.identity(precision="int8")
    assert int8["quantization"] == {"precision": "int8", "ranges_sha256": embedder.quantization_ranges.digest()}
    check_identity(floats, embedder.identity(precision="float16"))  # float16 is float32 to rounding
    with pytest.raises(EmbedderMismatchError, match="quantization: stored null"):
        check_identity(floats, int8)
    with pytest.raises(EmbedderMismatchError, match=r"quantization\[.precision.\]: stored \"int8\", now \"binary\""):
        check_identity(int8, embedder.identity(precision="binary"))
    # Ranges fitted on other texts: the same configuration otherwise, other int8 vectors.
    other = KVEmbedder(embedder.model, embedder.tokenizer, embedder.config, name=embedder.name)
    other.quantization_ranges = QuantizationRanges(
        embedder.quantization_ranges.low * 2, embedder.quantization_ranges.high * 2
    )
    with pytest.raises(EmbedderMismatchError, match="ranges_sha256"):
        check_identity(int8, other.identity(precision="int8"))


def test_ranges_set_or_fitted_travel_with_a_pickled_embedder(embedder):
    copy = pickle.loads(pickle.dumps(embedder))
    ranges = QuantizationRanges(embedder.quantization_ranges.low * 2, embedder.quantization_ranges.high * 2)
    copy.quantization_ranges = ranges  # as Ray hands its actors the driver's
    clone = pickle.loads(pickle.dumps(copy))
    np.testing.assert_array_equal(clone.quantization_ranges.low, ranges.low)
    np.testing.assert_array_equal(clone.encode(TEXTS, precision="int8"), copy.encode(TEXTS, precision="int8"))
