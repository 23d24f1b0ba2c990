"""Score fusion (``core/fusion.py``): min-max and reciprocal rank fusion, and BM25, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from kv_embeddings_integrations.core.outputs import fusion


def test_fusion_by_hand():
    dense = np.array([[0.9, 0.1, 0.5], [0.2, 0.2, 0.2]])
    sparse = np.array([[0.0, 4.0, 2.0], [1.0, 0.0, 3.0]])
    fused = fusion.minmax_fusion(dense, sparse, weights=[0.5, 0.5])
    np.testing.assert_allclose(fused[0], [0.5 * 1 + 0.5 * 0, 0.5 * 0 + 0.5 * 1, 0.5 * 0.5 + 0.5 * 0.5])
    np.testing.assert_allclose(fused[1], [0.5 * 1 / 3, 0.0, 0.5])  # equal dense scores count 0
    rrf = fusion.reciprocal_rank_fusion(dense, sparse, k=60)
    np.testing.assert_allclose(rrf[0], [1 / 61 + 1 / 63, 1 / 63 + 1 / 61, 1 / 62 + 1 / 62])
    top1 = fusion.reciprocal_rank_fusion(dense, sparse, k=1, depth=1)
    np.testing.assert_allclose(top1[0], [1 / 2, 1 / 2, 0.0])
    np.testing.assert_array_equal(fusion.top_k(rrf, 2)[0], [0, 1])
    with pytest.raises(ValueError, match="share one"):
        fusion.minmax_fusion(dense, sparse[:, :2])


def test_bm25_scores_match_the_formula():
    docs = ["the cat sat on the mat", "dogs chase cats", "a bird sang"]
    scores = fusion.bm25_scores(["cat", "birds singing", "zebra"], docs)
    assert scores.shape == (3, 3)
    # "cat" stems to "cat": in documents 0 and 1 ("cats"), not 2; unknown words score nothing.
    assert scores[0, 0] > 0 and scores[0, 1] > 0 and scores[0, 2] == 0
    assert scores[1, 2] > 0 and scores[1, :2].sum() == 0
    assert not scores[2].any()
    # Lucene BM25 for one term: idf = ln(1 + (N - n + 0.5) / (n + 0.5)), tf part with k1 1.5, b 0.75.
    lengths = [3, 3, 2]  # after stopwords: cat sat mat / dog chase cat / bird sang
    idf = np.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    average = np.mean(lengths)
    expected = idf * 1 / (1 + 1.5 * (1 - 0.75 + 0.75 * lengths[0] / average))
    assert scores[0, 0] == pytest.approx(expected, rel=1e-5)
