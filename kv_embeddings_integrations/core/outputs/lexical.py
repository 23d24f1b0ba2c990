"""A lexical channel inside the dense vector: hybrid retrieval for stores that hold one vector.

Most vector stores hold one dense vector per text. This module appends a second, lexical half to
it, so that a plain cosine or dot-product search scores a fusion of both:

- **The lexical weights** of a text, over the model's own token ids (``KINDS``):
  ``"sparse"``, the same forward pass's PromptReps weights (``sparse``); or ``"bm25"``, BM25's two
  halves: a document gets each token's saturated term frequency (see ``BM25_B`` on its length term),
  a query gets each token's IDF times its count. Queries carry the IDF in both, so documents never
  need corpus statistics
  ([`LexicalStatistics`][kv_embeddings_integrations.core.outputs.lexical.LexicalStatistics], fitted
  label-free on sample texts).
- **The sketch.** A count-sketch (feature hashing, Weinberger et al. 2009) folds the vocabulary
  into ``dim`` columns: each token id gets a column and a sign from a fixed seed
  ([`sketch_hashes`][kv_embeddings_integrations.core.outputs.lexical.sketch_hashes]), and the
  sketched vector is L2-normalised. The inner product of two sketches estimates the inner product of
  the unit lexical vectors with a standard deviation of about ``1 / sqrt(dim)``.
- **The fusion** ([`join`][kv_embeddings_integrations.core.outputs.lexical.join]). Documents
  store both halves at equal weight, ``[unit(dense), unit(sketch)] / sqrt(2)``; a query carries the
  weights, ``[a * unit(dense), b * unit(sketch)]`` with
  ``a : b = (1 - lexical_weight) : lexical_weight`` and ``a^2 + b^2 = 1``. Their dot product is
  ``c * ((1 - w) * cos_dense + w * cos_lexical)`` with ``c = 1 / (sqrt(2) * sqrt(a'^2 + b'^2))`` a
  constant of the query, so the ranking is the weighted fusion's; both vectors have unit length
  (cosine and dot-product stores agree), and the weight can change at query time without re-indexing
  (as Pinecone's sparse-dense index does). A text with no lexical terms keeps a zero lexical half
  and an unchanged dense half.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import ORIGIN_WORDS, cached_or_computed, read_keyed_tensors, texts_digest, write_keyed_tensors
from .sparse import SparseVectors

logger = logging.getLogger(__name__)

KINDS = ("none", "sparse", "bm25")
# Bump when the statistics or the weights change, so cached (and shipped) statistics stop matching.
LEXICAL_VERSION = 1
# BM25 counts the tokens of the lower-cased text (the model's tokens: "Protein" and "protein" are
# two ids otherwise).
BM25_LOWERCASE = True
# BM25's constants, chosen on the dev data (docs/results.md): k1 1.2 (Lucene's), and b 0, no
# length normalisation in the weights themselves. A document's lexical half is L2-normalised,
# which already discounts long documents, and the built-in texts' mean length (short sentences)
# says nothing of a user's documents: b 0.75 or 0.4 scored 3 to 9 points lower on both models.
BM25_K1 = 1.2
BM25_B = 0.0
# The seed of the sketch's hashes: recorded in the identity, never changed silently.
SKETCH_SEED = 0x5EED_4B56
_MASK64 = (1 << 64) - 1

SparseRow = tuple[np.ndarray, np.ndarray]  # (token ids int64, weights float32)


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 values: a fixed, platform-independent integer hash."""
    z = values.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def sketch_hashes(vocab_size: int, dim: int, seed: int = SKETCH_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Each token id's column (``int64`` in ``[0, dim)``) and sign (``float32`` +-1) in the sketch.

    A hash of ``(seed, token id)``, the same on every machine and NumPy version (no random stream)."""
    if dim < 1:
        raise ValueError(f"lexical_dim must be a positive int, got {dim}")
    ids = np.arange(vocab_size, dtype=np.uint64)
    hashed = _splitmix64(ids ^ np.uint64(seed & _MASK64))
    columns = (hashed % np.uint64(dim)).astype(np.int64)
    signs = np.where((hashed >> np.uint64(63)) == 1, -1.0, 1.0).astype(np.float32)
    return columns, signs


@dataclass(frozen=True, eq=False)
class LexicalStatistics:
    """Token statistics of a sample of texts: what queries' IDF and documents' length norm read.

    Attributes:
        document_frequency: ``(vocab_size,)`` in how many sample texts each token id occurs.
        texts: how many texts were counted.
        average_length: their mean length in tokens.
    """

    document_frequency: np.ndarray
    texts: int
    average_length: float

    @property
    def idf(self) -> np.ndarray:
        """BM25's IDF, ``ln(1 + (N - n + 0.5) / (n + 0.5))`` per token id (positive; unseen ids get
        the largest)."""
        n = self.document_frequency.astype(np.float64)
        return np.log1p((self.texts - n + 0.5) / (n + 0.5)).astype(np.float32)

    def tensors(self) -> dict[str, np.ndarray]:
        """The arrays to save, by name."""
        return {
            "document_frequency": self.document_frequency.astype(np.int64),
            "shape": np.array([self.texts], dtype=np.int64),
            "average_length": np.array([self.average_length], dtype=np.float64),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray]) -> LexicalStatistics:
        return cls(tensors["document_frequency"], int(tensors["shape"][0]), float(tensors["average_length"][0]))

    def digest(self) -> str:
        """SHA-256 of the statistics, for the identity: other statistics, other query vectors."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.document_frequency, dtype="<i8").tobytes())
        h.update(f"{self.texts}:{self.average_length!r}".encode())
        return h.hexdigest()


def fit_statistics(token_ids: Sequence[Sequence[int]], vocab_size: int) -> LexicalStatistics:
    """Document frequencies and the mean length of tokenized sample texts (no labels)."""
    if not token_ids:
        raise ValueError("lexical statistics need at least one text")
    frequency = np.zeros(vocab_size, dtype=np.int64)
    for ids in token_ids:
        unique = np.unique(np.asarray(ids, dtype=np.int64))
        if len(unique) and (unique[0] < 0 or unique[-1] >= vocab_size):
            raise ValueError(f"token ids outside the vocabulary of {vocab_size}")
        frequency[unique] += 1
    average = float(np.mean([len(ids) for ids in token_ids]))
    return LexicalStatistics(frequency, len(token_ids), max(average, 1.0))


def counts(ids: Sequence[int]) -> SparseRow:
    """A text's distinct token ids (sorted) and how often each occurs."""
    unique, count = np.unique(np.asarray(ids, dtype=np.int64), return_counts=True)
    return unique, count.astype(np.float32)


def bm25_document(ids: Sequence[int], statistics: LexicalStatistics) -> SparseRow:
    """BM25's document half: ``tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / average_length))``."""
    unique, tf = counts(ids)
    norm = BM25_K1 * (1 - BM25_B + BM25_B * len(ids) / statistics.average_length)
    return unique, (tf * (BM25_K1 + 1) / (tf + norm)).astype(np.float32)


def bm25_query(ids: Sequence[int], idf: np.ndarray) -> SparseRow:
    """BM25's query half: each distinct token's IDF times its count in the query."""
    unique, tf = counts(ids)
    return unique, (tf * idf[unique]).astype(np.float32)


def weighted_query(row: SparseRow, idf: np.ndarray) -> SparseRow:
    """A query's model weights (PromptReps) times the IDF of each token."""
    ids, values = row
    return ids, (values * idf[ids]).astype(np.float32)


def unit(rows: Sequence[SparseRow]) -> list[SparseRow]:
    """Each row at unit L2 length (float32); a row with no weight stays as it is."""
    out = []
    for ids, values in rows:
        norm = float(np.linalg.norm(values))
        out.append((ids, (values / norm if norm > 0 else values).astype(np.float32)))
    return out


def lowercases(kind: str) -> bool:
    """Whether ``kind``'s weights count the tokens of the lower-cased text (BM25's do)."""
    return kind == "bm25" and BM25_LOWERCASE


def sketch(rows: Sequence[SparseRow], columns: np.ndarray, signs: np.ndarray, dim: int) -> np.ndarray:
    """Count-sketches of sparse rows, each L2-normalised: ``(len(rows), dim)`` float32; a row with
    no weight stays all zeros."""
    out = np.zeros((len(rows), dim), dtype=np.float64)
    for r, (ids, values) in enumerate(rows):
        if len(ids):
            np.add.at(out[r], columns[ids], signs[ids].astype(np.float64) * values.astype(np.float64))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.where(norms > 0, out / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)


def query_scales(lexical_weight: float) -> tuple[float, float]:
    """A query's ``(dense, lexical)`` factors: ``(1 - w) : w``, of unit length together."""
    if not 0.0 <= lexical_weight <= 1.0:
        raise ValueError(f"lexical_weight must be within [0, 1], got {lexical_weight}")
    norm = math.hypot(1.0 - lexical_weight, lexical_weight)
    return (1.0 - lexical_weight) / norm, lexical_weight / norm


def join(dense: np.ndarray, lexical: np.ndarray, side: str, lexical_weight: float) -> np.ndarray:
    """The one vector: unit dense and unit lexical halves side by side, weighted for ``side``.

    Args:
        dense: ``(n, d)`` L2-normalised dense vectors.
        lexical: ``(n, m)`` L2-normalised sketches (rows of zeros where a text has no terms).
        side: ``"document"`` (equal halves, ``1 / sqrt(2)`` each) or ``"query"`` (the weights).
        lexical_weight: ``w``, the lexical cosine's share of a query's score.
    """
    if side == "document":
        a = b = 1.0 / math.sqrt(2.0)
    elif side == "query":
        a, b = query_scales(lexical_weight)
    else:
        raise ValueError(f"side must be 'document' or 'query', got {side!r}")
    out = np.concatenate([a * np.asarray(dense, np.float32), b * np.asarray(lexical, np.float32)], axis=1)
    return np.ascontiguousarray(out, dtype=np.float32)


def fused_scores(
    dense_queries: np.ndarray,
    dense_documents: np.ndarray,
    lexical_queries: np.ndarray,
    lexical_documents: np.ndarray,
    lexical_weight: float,
) -> np.ndarray:
    """What [`join`][kv_embeddings_integrations.core.outputs.lexical.join]'s vectors rank by,
    computed exactly: ``(1 - w) * cos_dense + w * cos_lexical`` from unit dense vectors and unit
    (unsketched or sketched) lexical ones, ``(queries, documents)``."""
    dense = np.asarray(dense_queries, np.float64) @ np.asarray(dense_documents, np.float64).T
    lexical = np.asarray(lexical_queries, np.float64) @ np.asarray(lexical_documents, np.float64).T
    return ((1.0 - lexical_weight) * dense + lexical_weight * lexical).astype(np.float32)


def statistics_key(tokenizer_sha256: str, lowercase: bool, texts: Sequence[str]) -> dict[str, Any]:
    """What lexical statistics depend on: the tokenizer, the casing and the sample (the cache key)."""
    return {
        "version": LEXICAL_VERSION,
        "tokenizer_sha256": tokenizer_sha256,
        "lowercase": lowercase,
        "num_texts": len(texts),
        "texts_sha256": texts_digest(texts),
    }


def statistics_for(
    key: dict[str, Any],
    texts: Sequence[str],
    tokenize: Callable[[list[str]], list[list[int]]],
    vocab_size: int,
    name: str = "the model",
) -> LexicalStatistics:
    """The statistics for ``key``: the user's cached ones, else the package's shipped ones, else
    counted on ``texts`` (tokenized by ``tokenize``, lower-cased as the key says) and cached."""

    def read(path: Path, origin: str) -> LexicalStatistics | None:
        found = read_keyed_tensors(path, key, LexicalStatistics.from_tensors, "lexical-statistics")
        return found if found is not None and found.document_frequency.shape == (vocab_size,) else None

    def count() -> LexicalStatistics:
        if not texts:
            raise ValueError("lexical statistics need at least one text to count")
        logger.info("%s: counting lexical statistics on %d texts (once, then cached)", name, len(texts))
        sample = [t.lower() for t in texts] if key["lowercase"] else list(texts)
        return fit_statistics(tokenize(sample), vocab_size)

    def write(path: Path, statistics: LexicalStatistics) -> None:
        write_keyed_tensors(path, key, statistics.tensors())

    statistics, origin = cached_or_computed("lexical", key, ".safetensors", read, count, write)
    if origin != "computed":
        logger.info("%s: lexical statistics %s", name, ORIGIN_WORDS[origin])
    return statistics


@dataclass(frozen=True, eq=False)
class LexicalChannel:
    """One configuration of the lexical half: which weights, how wide, how weighted, which statistics.

    Attributes:
        kind: ``"sparse"`` or ``"bm25"`` (see the module's docstring).
        dim: columns of the count-sketch.
        weight: the lexical cosine's share of a query's score.
        statistics: the token statistics queries' IDF and documents' length norm read.
        seed: the sketch's hash seed.
    """

    kind: str
    dim: int
    weight: float
    statistics: LexicalStatistics
    seed: int = SKETCH_SEED
    columns: np.ndarray = field(init=False, repr=False)
    signs: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS[1:]:
            raise ValueError(f"lexical must be one of {KINDS}, got {self.kind!r}")
        query_scales(self.weight)  # checks the range
        columns, signs = sketch_hashes(len(self.statistics.document_frequency), self.dim, self.seed)
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "signs", signs)

    @property
    def lowercase(self) -> bool:
        """Whether the text is lower-cased before its tokens are counted (BM25)."""
        return lowercases(self.kind)

    def record(self) -> dict[str, Any]:
        """What a store compares (the weight is not: it only scales the query's halves)."""
        return {
            "kind": self.kind,
            "dim": self.dim,
            "seed": self.seed,
            "version": LEXICAL_VERSION,
            "lowercase": self.lowercase,
            **({"k1": BM25_K1, "b": BM25_B} if self.kind == "bm25" else {}),
            "statistics_sha256": self.statistics.digest(),
        }

    def rows(
        self, side: str, token_ids: Sequence[Sequence[int]] | None = None, sparse: Sequence[SparseRow] | None = None
    ) -> list[SparseRow]:
        """Each text's lexical weights for ``side``: from its token ids (``bm25``) or from the same
        pass's sparse vectors (``sparse``)."""
        query = side == "query"
        if self.kind == "bm25":
            if token_ids is None:
                raise ValueError("bm25 lexical weights need the texts' token ids")
            if query:
                idf = self.statistics.idf
                return [bm25_query(ids, idf) for ids in token_ids]
            return [bm25_document(ids, self.statistics) for ids in token_ids]
        if sparse is None:
            raise ValueError("sparse lexical weights need the texts' sparse vectors")
        if query:
            idf = self.statistics.idf
            return [weighted_query(row, idf) for row in sparse]
        return list(sparse)

    def text_rows(
        self,
        texts: Sequence[str],
        side: str,
        tokenize: Callable[[list[str]], list[list[int]]],
        sparse: SparseVectors | None = None,
    ) -> list[SparseRow]:
        """[`rows`][kv_embeddings_integrations.core.outputs.lexical.LexicalChannel.rows] of texts:
        BM25 counts their tokens (lower-cased if it says so, by ``tokenize``), ``sparse`` weighs
        their sparse vectors from the same pass, one per text."""
        if self.kind == "bm25":
            return self.rows(side, token_ids=tokenize([t.lower() for t in texts] if self.lowercase else list(texts)))
        if sparse is None or len(sparse) != len(texts):
            raise ValueError("lexical='sparse' needs the texts' sparse vectors from the same pass, one per text")
        return self.rows(side, sparse=list(zip(sparse.indices, sparse.values, strict=True)))

    def sparse_vectors(self, rows: Sequence[SparseRow], side: str, vocab_size: int) -> SparseVectors:
        """``rows`` as a sparse store's vectors: documents' unit-length, queries' as they are
        (IDF-weighted), so a store's dot product is the exact lexical cosine."""
        rows = unit(rows) if side == "document" else list(rows)
        return SparseVectors(
            tuple(ids for ids, _ in rows), tuple(values.astype(np.float32) for _, values in rows), vocab_size
        )

    def vectors(self, dense: np.ndarray, rows: Sequence[SparseRow], side: str) -> np.ndarray:
        """The one vectors: ``dense`` (unit rows) and the sketched ``rows``, joined for ``side``."""
        return join(dense, sketch(rows, self.columns, self.signs, self.dim), side, self.weight)


def channel_for(
    kind: str,
    dim: int,
    weight: float,
    texts: Sequence[str],
    tokenizer_sha256: str,
    tokenize: Callable[[list[str]], list[list[int]]],
    vocab_size: int,
    name: str = "the model",
    statistics: LexicalStatistics | None = None,
) -> LexicalChannel | None:
    """The lexical channel ``kind`` asks for (``None`` for ``"none"``), its statistics the given
    ones, else read from the cache or counted on ``texts``
    ([`statistics_for`][kv_embeddings_integrations.core.outputs.lexical.statistics_for])."""
    if kind == "none":
        return None
    if statistics is None:
        key = statistics_key(tokenizer_sha256, lowercases(kind), texts)
        statistics = statistics_for(key, texts, tokenize, vocab_size, name)
    elif statistics.document_frequency.shape != (vocab_size,):
        raise ValueError(
            f"lexical statistics over {len(statistics.document_frequency)} token ids, the model has {vocab_size}"
        )
    return LexicalChannel(kind, dim, weight, statistics)
