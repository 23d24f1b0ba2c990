"""The lexical channel (core/lexical.py), against slow references written here: BM25 term by term,
the sketch against exact cosines, and the one vector against its two halves computed apart."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import TEXTS, make_model, tiny_model_dir

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.core.concurrency.recipe import EmbedderRecipe
from kv_embeddings_integrations.core.outputs import lexical

CORPUS = [
    "the cat sat on the mat",
    "a dog chased the cat",
    "proteins fold into shapes",
    "the mat was red",
    "Cats and dogs and cats",
]


def _bm25_reference(query: list[int], document: list[int], corpus: list[list[int]]) -> float:
    """BM25 (Robertson; IDF ln(1 + (N - n + 0.5) / (n + 0.5))) term by term, with the module's k1 and b."""
    n_docs, avg = len(corpus), sum(map(len, corpus)) / len(corpus)
    score = 0.0
    for term in set(query):
        n = sum(term in d for d in corpus)
        idf = math.log(1 + (n_docs - n + 0.5) / (n + 0.5))
        tf = document.count(term)
        k1, b = lexical.BM25_K1, lexical.BM25_B
        score += query.count(term) * idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(document) / avg))
    return score


@pytest.mark.parametrize("k1,b", [(lexical.BM25_K1, lexical.BM25_B), (1.2, 0.75), (0.9, 0.4)])
def test_bm25_halves_multiply_to_bm25(tokenizer, monkeypatch, k1, b):
    monkeypatch.setattr(lexical, "BM25_K1", k1)
    monkeypatch.setattr(lexical, "BM25_B", b)
    corpus = [tokenizer(t.lower(), add_special_tokens=False)["input_ids"] for t in CORPUS]
    statistics = lexical.fit_statistics(corpus, len(tokenizer))
    assert statistics.texts == 5 and statistics.average_length == pytest.approx(sum(map(len, corpus)) / 5)
    for query in (corpus[0], corpus[4][:3], tokenizer("cat mat", add_special_tokens=False)["input_ids"]):
        q = dict(zip(*map(np.ndarray.tolist, lexical.bm25_query(query, statistics.idf)), strict=True))
        for document in corpus:
            d = dict(zip(*map(np.ndarray.tolist, lexical.bm25_document(document, statistics)), strict=True))
            got = sum(weight * d.get(token, 0.0) for token, weight in q.items())
            assert got == pytest.approx(_bm25_reference(query, document, corpus), rel=1e-5)


def test_sketch_hashes_are_fixed_and_balanced():
    columns, signs = lexical.sketch_hashes(50_000, 4096)
    # Pinned: the same columns and signs on every machine and NumPy version (a stored index depends on them).
    assert columns[:6].tolist() == lexical.sketch_hashes(6, 4096)[0].tolist()
    assert columns[[0, 1, 2, 49_999]].tolist() == [3992, 44, 1471, 504]
    assert signs[[0, 1, 2, 49_999]].tolist() == [1.0, 1.0, -1.0, 1.0]
    assert columns.min() >= 0 and columns.max() < 4096 and set(np.unique(signs)) == {-1.0, 1.0}
    assert abs(signs.mean()) < 0.02 and np.bincount(columns, minlength=4096).min() > 0
    other, _ = lexical.sketch_hashes(50_000, 4096, seed=1)
    assert (other != columns).mean() > 0.99


def _random_rows(rng, count, vocab, terms):
    return [
        (np.sort(rng.choice(vocab, terms, replace=False)), rng.gamma(1.0, 1.0, terms).astype(np.float32))
        for _ in range(count)
    ]


def _exact_cosines(a, b, vocab):
    def dense(rows):
        out = np.zeros((len(rows), vocab))
        for r, (ids, values) in enumerate(rows):
            out[r, ids] = values
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return dense(a) @ dense(b).T


@pytest.mark.parametrize("dim", [1024, 4096])
def test_the_sketch_estimates_the_exact_cosine_within_its_width(dim):
    rng = np.random.default_rng(0)
    vocab = 30_000
    queries, documents = _random_rows(rng, 20, vocab, 12), _random_rows(rng, 60, vocab, 120)
    # Queries share terms with documents, so cosines span a range.
    queries += [(documents[i][0][:12], documents[i][1][:12]) for i in range(20)]
    columns, signs = lexical.sketch_hashes(vocab, dim)
    sketched = lexical.sketch(queries, columns, signs, dim) @ lexical.sketch(documents, columns, signs, dim).T
    error = sketched - _exact_cosines(queries, documents, vocab)
    # Feature hashing: the error's standard deviation is about 1 / sqrt(dim) for unit vectors
    # (measured 0.96-1.07 / sqrt(dim) over seeds). Its tail is heavy where a few terms carry most
    # of the weight (two heavy terms colliding): the 99th percentile is 4-5 / sqrt(dim) here.
    assert error.std() < 1.25 / math.sqrt(dim)
    assert np.quantile(np.abs(error), 0.99) < 6 / math.sqrt(dim)


def test_join_weights_the_query_and_keeps_zero_halves_zero():
    rng = np.random.default_rng(1)
    dense = rng.normal(size=(4, 8)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    sketches = rng.normal(size=(4, 16)).astype(np.float32)
    sketches /= np.linalg.norm(sketches, axis=1, keepdims=True)
    sketches[3] = 0.0  # a text with no lexical terms
    for w in (0.0, 0.3, 0.5, 0.8, 1.0):
        documents = lexical.join(dense, sketches, "document", w)
        queries = lexical.join(dense, sketches, "query", w)
        np.testing.assert_allclose(np.linalg.norm(documents[:3], axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(queries[:3], axis=1), 1.0, rtol=1e-6)
        # The dense half is untouched by a missing lexical half, and that half stays zero.
        np.testing.assert_allclose(documents[3, :8], dense[3] / math.sqrt(2), rtol=1e-6)
        assert not documents[3, 8:].any() and not queries[3, 8:].any()
        expected = lexical.fused_scores(dense, dense, sketches, sketches, w)
        constant = 1 / (math.sqrt(2) * math.hypot(1 - w, w))
        np.testing.assert_allclose(queries @ documents.T, constant * expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="within"):
        lexical.join(dense, sketches, "query", 1.5)


@pytest.fixture(scope="module")
def dense_and_bm25(tokenizer):
    model = make_model("llama")
    dense = KVEmbedder(model, tokenizer, method="kv", layers=[1], postprocess="none", lexical="none")
    one = KVEmbedder(model, tokenizer, method="kv", layers=[1], postprocess="none", lexical="bm25", lexical_dim=256)
    return dense, one


def test_the_one_vector_is_the_dense_vector_and_the_bm25_sketch(dense_and_bm25, tokenizer):
    dense, one = dense_and_bm25
    assert one.dimension == dense.dimension + 256
    channel = one.lexical
    assert channel is not None and channel.lowercase
    for prompt_type, side in (("document", "document"), ("query", "query"), ("search_query", "query")):
        got = one.encode(TEXTS, prompt_type=prompt_type)
        ids = [tokenizer(t.lower(), add_special_tokens=False)["input_ids"] for t in TEXTS]
        if side == "query":
            rows = [lexical.bm25_query(i, channel.statistics.idf) for i in ids]
        else:
            rows = [lexical.bm25_document(i, channel.statistics) for i in ids]
        halves = lexical.sketch(rows, channel.columns, channel.signs, 256)
        a, b = lexical.query_scales(channel.weight) if side == "query" else (2**-0.5, 2**-0.5)
        np.testing.assert_allclose(
            got[:, : dense.dimension], a * dense.encode(TEXTS, prompt_type=prompt_type), atol=1e-6
        )
        np.testing.assert_allclose(got[:, dense.dimension :], b * halves, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_the_built_in_statistics_count_the_calibration_texts(dense_and_bm25, tokenizer):
    from kv_embeddings_integrations.core.calibration import builtin_calibration_texts

    _, one = dense_and_bm25
    texts = builtin_calibration_texts()
    counted = [tokenizer(t.lower(), add_special_tokens=False)["input_ids"] for t in texts]
    statistics = one.lexical.statistics
    assert statistics.texts == len(texts) == 1000
    assert statistics.average_length == pytest.approx(np.mean([len(c) for c in counted]))
    token = counted[0][0]
    assert statistics.document_frequency[token] == sum(token in c for c in counted)


def test_the_query_weight_changes_queries_only(tokenizer):
    model = make_model("llama")
    options = {"method": "kv", "layers": [1], "postprocess": "none", "lexical": "bm25", "lexical_dim": 128}
    a = KVEmbedder(model, tokenizer, **options, lexical_weight=0.5)
    b = KVEmbedder(model, tokenizer, **options, lexical_weight=0.2)
    np.testing.assert_array_equal(a.encode(TEXTS), b.encode(TEXTS))
    assert not np.allclose(a.encode(TEXTS, prompt_type="query"), b.encode(TEXTS, prompt_type="query"))
    # So a store built with one weight is queried with another: the weight is recorded, not compared.
    assert a.identity()["fingerprint"] == b.identity()["fingerprint"]
    assert a.identity()["lexical_weight"] == 0.5


def test_identity_tells_lexical_configurations_and_statistics_apart(tokenizer):
    from kv_embeddings_integrations.core.identity import EmbedderMismatchError, check_identity

    model = make_model("llama")
    base = {"method": "kv", "layers": [1], "postprocess": "none"}
    plain = KVEmbedder(model, tokenizer, **base, lexical="none")
    bm25 = KVEmbedder(model, tokenizer, **base, lexical="bm25", lexical_dim=128)
    assert "lexical" not in plain.identity()  # records made before the channel existed still match
    for other, field in (
        (plain, "lexical"),
        (KVEmbedder(model, tokenizer, **base, lexical="bm25", lexical_dim=64), "lexical"),
        (KVEmbedder(model, tokenizer, **base, lexical="bm25", lexical_dim=128, lexical_texts=CORPUS), "lexical"),
    ):
        with pytest.raises(EmbedderMismatchError, match=field):
            check_identity(bm25.identity(), other.identity())
    refitted = KVEmbedder(model, tokenizer, **base, lexical="bm25", lexical_dim=128)
    statistics = refitted.fit_lexical_statistics(CORPUS)
    assert statistics.texts == len(CORPUS)
    with pytest.raises(EmbedderMismatchError, match="statistics_sha256"):
        check_identity(bm25.identity(), refitted.identity())
    check_identity(refitted.identity(), KVEmbedder(model, tokenizer, **base, **{
        "lexical": "bm25", "lexical_dim": 128, "lexical_texts": CORPUS}).identity())  # fmt: skip


def test_a_rebuilt_embedder_keeps_fitted_statistics(tokenizer):
    embedder = KVEmbedder(make_model("llama"), tokenizer, method="kv", layers=[1], lexical="bm25", lexical_dim=64)
    embedder.fit_lexical_statistics(CORPUS)
    recipe = embedder.recipe()
    assert isinstance(recipe, EmbedderRecipe)
    rebuilt = recipe.build()
    assert rebuilt.lexical.statistics.digest() == embedder.lexical.statistics.digest()
    np.testing.assert_array_equal(rebuilt.encode(TEXTS), embedder.encode(TEXTS))


def test_bad_lexical_options_are_refused_clearly(tokenizer):
    model = make_model("llama")
    with pytest.raises(ValueError, match="lexical_weight"):
        KVEmbedder(model, tokenizer, lexical="bm25", lexical_weight=1.5)
    with pytest.raises(ValueError, match="lexical_dim"):
        KVEmbedder(model, tokenizer, lexical="bm25", lexical_dim=0)
    with pytest.raises(ValueError, match="lexical"):
        KVEmbedder(model, tokenizer, lexical="tfidf")
    # An untied base model has no LM head: the sparse weights cannot be read, said at construction.
    with pytest.raises(ValueError, match="LM head"):
        KVEmbedder.from_pretrained(tiny_model_dir(), layers=[1], lexical="sparse")
    one = KVEmbedder(model, tokenizer, layers=[1], lexical="bm25", lexical_dim=64)
    with pytest.raises(ValueError, match="normalize=True"):
        one.encode(TEXTS, normalize=False)
    with pytest.raises(ValueError, match="no lexical channel"):
        KVEmbedder(model, tokenizer, layers=[1], lexical="none").fit_lexical_statistics(CORPUS)
    with pytest.raises(ValueError, match="non-empty list of strings"):
        one.fit_lexical_statistics([])


def test_sparse_weights_come_from_the_same_pass(tokenizer):
    model = make_model("llama", tie_word_embeddings=True)
    one = KVEmbedder(model, tokenizer, method="kv", layers=[1], postprocess="none", lexical="sparse", lexical_dim=512)
    plain = KVEmbedder(model, tokenizer, method="kv", layers=[1], postprocess="none", lexical="none")
    channel = one.lexical
    for prompt_type in ("document", "query"):
        sparse = plain.encode_sparse(TEXTS, prompt_type=prompt_type)
        rows = list(zip(sparse.indices, sparse.values, strict=True))
        if prompt_type == "query":
            rows = [(ids, values * channel.statistics.idf[ids]) for ids, values in rows]
        scale = lexical.query_scales(channel.weight)[1] if prompt_type == "query" else 2**-0.5
        got = one.encode(TEXTS, prompt_type=prompt_type)[:, plain.dimension :]
        np.testing.assert_allclose(got, scale * lexical.sketch(rows, channel.columns, channel.signs, 512), atol=1e-6)
        # embed(sparse=True) still hands the sparse vectors back beside the one vectors.
        result = one.embed(TEXTS, prompt_type=prompt_type, sparse=True)
        assert result.sparse is not None and result.sparse.to_dicts() == sparse.to_dicts()
