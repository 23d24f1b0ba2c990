"""Properties over arbitrary input (hypothesis): finite unit vectors, independent of batch company,
order and repetition, bit for bit deterministic."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import PAPER, make_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kv_embeddings_integrations import KVEmbedder

pytestmark = pytest.mark.timing

# Any Unicode, unpaired surrogates and control characters included.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=80)
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# Function scope: an embedder keeps a request queue and worker thread that a test could leave busy.
@pytest.fixture
def embedder(tokenizer):
    return KVEmbedder(make_model("qwen3"), tokenizer, layers=[1, 2], max_length=48, **PAPER)


def _quiet(embedder, texts, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation and surrogate warnings are tested elsewhere
        return embedder.encode(texts, **kwargs)


@PROPERTY
@given(texts=st.lists(ANY_TEXT, min_size=1, max_size=6))
def test_any_unicode_gives_finite_unit_vectors(embedder, texts):
    vectors = _quiet(embedder, texts)
    assert vectors.shape == (len(texts), embedder.hidden_size) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    raw = _quiet(embedder, texts, normalize=False)
    assert np.isfinite(raw).all()


@PROPERTY
@given(texts=st.lists(ANY_TEXT, min_size=2, max_size=6), seed=st.integers(0, 2**16))
def test_vectors_do_not_depend_on_batch_company_order_or_repetition(embedder, texts, seed):
    together = _quiet(embedder, texts)
    order = np.random.default_rng(seed).permutation(len(texts))
    shuffled = _quiet(embedder, [texts[i] for i in order], batch_size=2)
    np.testing.assert_allclose(shuffled, together[order], atol=1e-4)
    alone = np.stack([_quiet(embedder, [text])[0] for text in texts])
    np.testing.assert_allclose(alone, together, atol=1e-4)
    np.testing.assert_array_equal(_quiet(embedder, texts), together)  # deterministic, bit for bit
