"""The evaluation's seams: the encoder Protocols and their optional capabilities, one evaluator per
kind of task, and the names the runner keeps exporting."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from helpers import TEXTS

from kv_embeddings_integrations.evaluation import (
    ClassificationTask,
    RetrievalTask,
    STSTask,
    evaluate_task_rows,
    exact_search,
    kv_variants,
    parse_variants,
    retrieval_scores,
    sts_spearman,
)
from kv_embeddings_integrations.evaluation.embeddings import Embeddings
from kv_embeddings_integrations.evaluation.encoders import LexicalEncoder, PostProcessed, Quantizer, SparseEncoder
from kv_embeddings_integrations.evaluation.tasks import evaluate_classification, evaluate_retrieval, evaluate_sts

pytest.importorskip("sklearn")
pytest.importorskip("pytrec_eval")


class LetterCounts:
    """A plain encoder (the base Protocol only): letter counts, final as encoded."""

    label = "letters"
    description = "letter counts"

    def namespace(self, prompt_type: str) -> dict[str, Any]:
        return {"encoder": "letters", "prompt_type": prompt_type}

    def encode(self, texts: list[str], prompt_type: str) -> np.ndarray:
        rows = [[t.lower().count(c) + 0.1 for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts]
        return np.asarray(rows, dtype=np.float32)


def _tasks() -> tuple[STSTask, RetrievalTask, ClassificationTask]:
    sts = STSTask("sts", TEXTS[:4], TEXTS[1:5], [4.0, 1.0, 2.5, 0.5])
    docs = {f"d{i}": t for i, t in enumerate(TEXTS)}
    retrieval = RetrievalTask(
        "ret", docs, {"q0": "guitar music", "q1": "amino acids"}, {"q0": {"d1": 1}, "q1": {"d3": 1}}
    )
    classification = ClassificationTask("cls", TEXTS * 4, ["x", "y"] * 10, TEXTS[:2], ["x", "y"])
    return sts, retrieval, classification


def test_kv_variants_have_every_capability_and_a_plain_encoder_none(model_dir):
    (variant,) = kv_variants(str(model_dir), parse_variants("kv(layers=1;lexical=none)"))
    for capability in (PostProcessed, SparseEncoder, LexicalEncoder, Quantizer):
        assert isinstance(variant, capability)
        assert not isinstance(LetterCounts(), capability)
    embed = Embeddings(LetterCounts(), None)
    assert embed.sparse_encoder is None and embed.quantizer is None and embed.channel is None
    assert embed.fit == "builtin"
    vectors = np.ones((2, 3), dtype=np.float32)
    assert embed.finish(vectors, vectors) is vectors and embed.lexical(vectors, ["a", "b"]) is vectors
    with pytest.raises(TypeError, match="no sparse vectors"):
        embed.with_sparse(["a"], "document")


def test_each_evaluator_scores_a_plain_encoder_from_its_vectors(tmp_path):
    sts, retrieval, classification = _tasks()
    encoder = LetterCounts()
    scores = evaluate_sts(Embeddings(encoder, None), sts, precisions=("binary",))
    expected = sts_spearman(encoder.encode(sts.sentences1, ""), encoder.encode(sts.sentences2, ""), sts.scores)
    assert scores.metrics == {"spearman": pytest.approx(expected)} and scores.extra == []  # no quantizer: no rows
    queries = encoder.encode(list(retrieval.queries.values()), "query")
    docs = encoder.encode(list(retrieval.corpus.values()), "document")
    run = exact_search(queries, docs, list(retrieval.corpus), list(retrieval.queries))
    scores = evaluate_retrieval(Embeddings(encoder, None), retrieval, hybrid=True, bm25={}, precisions=("int8",))
    assert scores.metrics == pytest.approx(retrieval_scores(retrieval.qrels, run)) and scores.extra == []
    scores = evaluate_classification(Embeddings(encoder, None), classification)
    assert set(scores.metrics) == {"accuracy", "accuracy_std"} and scores.extra == []
    # Through the runner: one row per task, each text embedded once (the tasks share texts and the
    # encoder's cache), and all of them read from the cache the second time.
    embedded = 0
    for task in (sts, retrieval, classification):
        (row,) = evaluate_task_rows(encoder, task, tmp_path / "cache", hybrid=True, precisions=("binary",))
        assert row.label == "letters" and row.kind == task.kind
        embedded += row.texts_embedded
        (again,) = evaluate_task_rows(encoder, task, tmp_path / "cache")
        assert again.texts_embedded == 0 and again.metrics == pytest.approx(row.metrics)
    assert embedded == len({*TEXTS, *TEXTS[1:5], "guitar music", "amino acids"})


def test_the_runner_keeps_exporting_the_names_that_moved():
    from kv_embeddings_integrations.evaluation import encoders, kv_encoder, references, results, runner, variants

    moved = {
        encoders: ("Encoder",),
        kv_encoder: ("KVVariant", "kv_variants"),
        references: ("BM25Reference", "SentenceTransformerReference", "REFERENCE_PACKAGES"),
        results: ("Evaluation", "TaskResult", "MAIN_SCORE", "environment"),
        variants: ("FITS", "parse_variants"),
    }
    for module, names in moved.items():
        for name in names:
            assert getattr(runner, name) is getattr(module, name), name
    assert runner._Embeddings is Embeddings  # docs/results/dev/lexical_sweep.py
