"""The sweep behind the lexical channel's defaults (docs/results.md, "One vector for plain stores").

Reads the vectors that `sweep.sh retrieval-base MODEL` cached (the raw dense vectors and the same
pass's sparse vectors of the full SciFact dev corpus and its 809 train queries) and scores, with
the package's own functions (core.outputs.lexical, evaluation.metrics), every combination of:

- the dense part: centered, per-side centered (a query-prompt mean for queries), standardized,
  per-side standardized; each fitted on the 1000 built-in calibration texts only;
- the lexical weights: the model's sparse vectors (queries x IDF), BM25 over the model's tokens
  (several k1 / b), both (their unit vectors summed); statistics from the built-in texts or the corpus;
- the lexical share w of a query's score;
- the sketch width (exact, 1024 to 8192).

Nothing is embedded again but the 1000 built-in texts (for the dense fits).

    python docs/results/dev/lexical_sweep.py MODEL --out docs/results/dev/MODEL-lexical/sweep.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix, diags

from kv_embeddings_integrations.core.cache import cache_dir
from kv_embeddings_integrations.core.calibration import builtin_calibration_texts
from kv_embeddings_integrations.core.fitting.postprocessing import fit
from kv_embeddings_integrations.core.outputs import lexical
from kv_embeddings_integrations.evaluation import load_retrieval
from kv_embeddings_integrations.evaluation.embeddings import Embeddings as _Embeddings
from kv_embeddings_integrations.evaluation.embeddings import kv_variants, parse_variants
from kv_embeddings_integrations.evaluation.metrics import matrix_scores

EVALDATA = Path(__file__).resolve().parents[4] / "shared" / "evaldata"
WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7)
BM25 = ((1.2, 0.75), (0.9, 0.4), (0.6, 0.3), (1.2, 0.0), (0.9, 0.0), (0.6, 0.0))


def unit_rows(rows, vocab: int) -> csr_matrix:
    """Rows as unit vectors over the vocabulary (zeros stay zeros), sparse: exact, no sketch."""
    pointers = np.concatenate([[0], np.cumsum([len(ids) for ids, _ in rows])])
    ids = np.concatenate([np.asarray(i, np.int64) for i, _ in rows])
    values = np.concatenate([np.asarray(v, np.float64) for _, v in rows])
    matrix = csr_matrix((values, ids, pointers), shape=(len(rows), vocab))
    matrix.sum_duplicates()
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    return csr_matrix(diags(np.where(norms > 0, 1 / np.where(norms > 0, norms, 1), 0.0)) @ matrix)


def rows_of(matrix: csr_matrix) -> list:
    return [(matrix.indices[a:b], matrix.data[a:b]) for a, b in zip(matrix.indptr[:-1], matrix.indptr[1:], strict=True)]


def sketched(unit: csr_matrix, dim: int) -> np.ndarray:
    """Unit vocabulary rows folded into ``dim`` columns by the package's count-sketch, renormalised."""
    columns, signs = lexical.sketch_hashes(unit.shape[1], dim)
    return lexical.sketch(rows_of(unit), columns, signs, dim)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    task = load_retrieval(EVALDATA / "scifact-train", split="train")
    doc_ids, query_ids = list(task.corpus), list(task.queries)

    def ndcg(scores: np.ndarray) -> float:
        return round(matrix_scores(task.qrels, scores, doc_ids, query_ids)["ndcg_at_10"], 2)

    [encoder] = kv_variants(args.model, parse_variants("kv(postprocess=center)"), dtype="bfloat16", max_length=256)
    embedder = encoder.embedder
    embed = _Embeddings(encoder, cache_dir() / "embeddings")
    doc_texts, query_texts = [task.corpus[d] for d in doc_ids], [task.queries[q] for q in query_ids]
    docs, doc_sparse = embed.with_sparse(doc_texts, "document")
    queries, query_sparse = embed.with_sparse(query_texts, "query")
    if embed.embedded:
        print(f"note: embedded {embed.embedded} texts (the cache was not filled)", file=sys.stderr)
    vocab = embedder.vocab_size
    calibration = builtin_calibration_texts()
    cal_docs = embedder.embed(calibration, postprocess=False).vectors
    cal_queries = embedder.embed(calibration, prompt_type="query", postprocess=False).vectors

    fits = {kind: (fit(cal_docs, kind), fit(cal_queries, kind)) for kind in ("center", "standardize")}
    dense = {}
    for kind, (document_fit, query_fit) in fits.items():
        d = document_fit.apply(docs).astype(np.float64)
        dense[kind] = document_fit.apply(queries).astype(np.float64) @ d.T
        dense[f"per-side {kind}"] = query_fit.apply(queries).astype(np.float64) @ d.T
    results: dict[str, float] = {f"dense | {name}": ndcg(scores) for name, scores in dense.items()}
    for key, value in results.items():
        print(key, value, flush=True)

    def tokens(texts, lower):
        return embedder.tokenize_strings([t.lower() if lower else t for t in texts], add_special_tokens=False)[
            "input_ids"
        ]

    cased = {"docs": tokens(doc_texts, False), "queries": tokens(query_texts, False), "cal": tokens(calibration, False)}
    lower = {"docs": tokens(doc_texts, True), "queries": tokens(query_texts, True), "cal": tokens(calibration, True)}
    lexical_units: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for source in ("builtin", "corpus"):
        for casing, toks in (("cased", cased), ("lower", lower)):
            stats = lexical.fit_statistics(toks["cal" if source == "builtin" else "docs"], vocab)
            for k1, b in BM25:
                lexical.BM25_K1, lexical.BM25_B = k1, b
                lexical_units[f"bm25 k1 {k1} b {b} {casing} {source}"] = (
                    unit_rows([lexical.bm25_query(t, stats.idf) for t in toks["queries"]], vocab),
                    unit_rows([lexical.bm25_document(t, stats) for t in toks["docs"]], vocab),
                )
        stats = lexical.fit_statistics(cased["cal" if source == "builtin" else "docs"], vocab)
        lexical_units[f"sparse {source}"] = (
            unit_rows(
                [
                    lexical.weighted_query(r, stats.idf)
                    for r in zip(query_sparse.indices, query_sparse.values, strict=True)
                ],
                vocab,
            ),
            unit_rows(list(zip(doc_sparse.indices, doc_sparse.values, strict=True)), vocab),
        )
    for source in ("builtin", "corpus"):
        q_s, d_s = lexical_units[f"sparse {source}"]
        q_b, d_b = lexical_units[f"bm25 k1 1.2 b 0.0 lower {source}"]
        lexical_units[f"both {source}"] = (unit_rows(rows_of(q_s + q_b), vocab), unit_rows(rows_of(d_s + d_b), vocab))
    lexical_scores = {name: np.asarray((q @ d.T).todense(), np.float64) for name, (q, d) in lexical_units.items()}
    for name, scores in lexical_scores.items():
        results[f"lexical | {name}"] = ndcg(scores)
        print("lexical |", name, results[f"lexical | {name}"], flush=True)

    for dname, dscores in dense.items():
        for lname, lscores in lexical_scores.items():
            for w in WEIGHTS:
                results[f"exact | {dname} | {lname} | w {w}"] = ndcg((1 - w) * dscores + w * lscores)
            best = max(WEIGHTS, key=lambda w: results[f"exact | {dname} | {lname} | w {w}"])
            print(f"exact | {dname} | {lname}: best w {best}: {results[f'exact | {dname} | {lname} | w {best}']}")

    for lname in ("bm25 k1 1.2 b 0.0 lower builtin", "sparse builtin", "both builtin"):
        q, d = lexical_units[lname]
        for dim in (1024, 2048, 4096, 8192):
            start = time.perf_counter()
            sq, sd = sketched(q, dim), sketched(d, dim)
            seconds = time.perf_counter() - start
            lscores = (sq @ sd.T).astype(np.float64)
            results[f"sketch | {lname} | {dim} | alone"] = ndcg(lscores)
            for dname in dense:
                for w in WEIGHTS:
                    results[f"sketch | {dname} | {lname} | {dim} | w {w}"] = ndcg((1 - w) * dense[dname] + w * lscores)
            line = ", ".join(
                f"{dname} w{w} {results[f'sketch | {dname} | {lname} | {dim} | w {w}']}"
                for dname in ("center", "standardize")
                for w in (0.5, 0.7)
            )
            print(f"sketch | {lname} | {dim} ({seconds:.1f} s to sketch): {line}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
