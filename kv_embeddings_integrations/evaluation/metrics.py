"""Metrics computed as MTEB computes them (all reported x100).

- STS: Spearman correlation between cosine similarity and the gold score.
- Retrieval: exact cosine search over the whole corpus; nDCG@10 and recall@100 by ``pytrec_eval``
  (trec_eval's definitions, as BEIR and MTEB use), MRR@10 with MTEB's tie-break (score, then doc id,
  both descending, as pytrec_eval ranks).
- Classification: MTEB's protocol: ``n_experiments`` times, draw ``samples_per_label`` train texts per
  label, fit ``LogisticRegression(max_iter=100)`` on their embeddings, score accuracy on the test set;
  report the mean.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from ..core.extras import require


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def sts_spearman(embeddings1: np.ndarray, embeddings2: np.ndarray, gold: Sequence[float]) -> float:
    """Spearman x100 between the pairs' cosine similarities and the gold scores."""
    require("eval", "STS scoring", ("scipy",))
    from scipy.stats import spearmanr

    cosine = (_unit(embeddings1) * _unit(embeddings2)).sum(axis=1)
    return 100.0 * float(spearmanr(cosine, np.asarray(gold, dtype=np.float64)).statistic)


def exact_search(
    query_embeddings: np.ndarray,
    doc_embeddings: np.ndarray,
    doc_ids: Sequence[str],
    query_ids: Sequence[str],
    top_k: int = 100,
    chunk: int = 256,
) -> dict[str, dict[str, float]]:
    """The ``top_k`` documents by cosine for each query: ``{query_id: {doc_id: score}}``."""
    queries, docs = _unit(query_embeddings), _unit(doc_embeddings)
    top_k = min(top_k, len(doc_ids))
    run: dict[str, dict[str, float]] = {}
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ docs.T
        best = np.argpartition(-scores, top_k - 1, axis=1)[:, :top_k]
        for row, (qid, picks) in enumerate(zip(query_ids[start : start + chunk], best, strict=True)):
            run[qid] = {doc_ids[j]: float(scores[row, j]) for j in picks}
    return run


def matrix_scores(
    qrels: dict[str, dict[str, int]], scores: np.ndarray, doc_ids: Sequence[str], query_ids: Sequence[str]
) -> dict[str, float]:
    """The retrieval metrics of a full ``(queries, documents)`` score matrix: each query's top 100
    (stable order on ties), scores of ``-inf`` (not retrieved) left out."""
    best = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, : min(100, len(doc_ids))]
    run = {
        q: {doc_ids[j]: float(scores[row, j]) for j in best[row] if np.isfinite(scores[row, j])}
        for row, q in enumerate(query_ids)
    }
    return retrieval_scores(qrels, run)


def mrr_at_k(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], k: int = 10) -> float:
    """Mean reciprocal rank of the first relevant document in the top ``k``, x100 (MTEB's definition)."""
    ranks = []
    for qid, scores in run.items():
        relevant = {d for d, grade in qrels.get(qid, {}).items() if grade > 0}
        ranked = sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)[:k]
        ranks.append(next((1.0 / (i + 1) for i, (doc, _) in enumerate(ranked) if doc in relevant), 0.0))
    return 100.0 * float(np.mean(ranks)) if ranks else 0.0


def retrieval_scores(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """nDCG@10, recall@100 and MRR@10 (x100) of a run against qrels, averaged over judged queries."""
    require("eval", "retrieval scoring", ("pytrec_eval",))
    import pytrec_eval

    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"})
    per_query = evaluator.evaluate(run)
    return {
        "ndcg_at_10": 100.0 * float(np.mean([s["ndcg_cut_10"] for s in per_query.values()])),
        "recall_at_100": 100.0 * float(np.mean([s["recall_100"] for s in per_query.values()])),
        "mrr_at_10": mrr_at_k(qrels, run, 10),
    }


def undersample(labels: Sequence[str], n_experiments: int = 10, samples_per_label: int = 8, seed: int = 42):
    """MTEB's train-set draws: for each experiment, the indices of ``samples_per_label`` texts per label.

    Reproduces ``AbsTaskClassification._undersample_data``: one index list, re-shuffled in place by a
    fresh ``RandomState(seed)`` each experiment, then the first ``samples_per_label`` of each label.
    """
    indices = list(range(len(labels)))
    draws = []
    for _ in range(n_experiments):
        np.random.RandomState(seed).shuffle(indices)
        counts: dict[str, int] = defaultdict(int)
        picked = []
        for i in indices:
            if counts[labels[i]] < samples_per_label:
                picked.append(i)
                counts[labels[i]] += 1
        draws.append(picked)
    return draws


def classification_accuracy(
    train_embeddings: np.ndarray,
    train_labels: Sequence[str],
    test_embeddings: np.ndarray,
    test_labels: Sequence[str],
    draws: list[list[int]],
) -> dict[str, float]:
    """Mean (and per-draw) test accuracy x100 of logistic regression fitted on each draw of train rows."""
    require("eval", "classification scoring", ("sklearn",))
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score

    labels = np.asarray(train_labels)
    accuracies = []
    for picked in draws:
        classifier = LogisticRegression(max_iter=100)
        with warnings.catch_warnings():
            # MTEB's max_iter=100 often stops short of convergence; keep its setting, not its noise.
            warnings.simplefilter("ignore", ConvergenceWarning)
            classifier.fit(train_embeddings[picked], labels[picked])
        accuracies.append(100.0 * float(accuracy_score(test_labels, classifier.predict(test_embeddings))))
    return {"accuracy": float(np.mean(accuracies)), "accuracy_std": float(np.std(accuracies))}
