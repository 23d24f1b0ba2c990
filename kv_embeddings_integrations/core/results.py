"""What one embedding call returns: the vectors and what the model saw of each text."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .outputs.sparse import SparseVectors, mean_of


@dataclass(frozen=True, eq=False)  # arrays have no single truth value: compare fields yourself
class EmbedResult:
    """Vectors of ``n`` texts, in input order, with each text's token usage and truncation.

    Attributes:
        vectors: ``(n, hidden_size)`` float32 array (L2-normalised unless asked otherwise).
        token_counts: tokens the model processed for each text, prompt included, as it saw them
            (after truncation; a text split by ``long_text="chunk_mean"`` counts all its pieces).
            Padding is not counted.
        truncated: whether each text was cut to ``max_length`` (with ``chunk_mean``: whether a
            piece of it still had to be cut).
        pieces: forward-pass rows each text took: 1, or the number of pieces ``chunk_mean`` split
            it into.
        sparse: the texts' sparse lexical vectors from the same pass, when asked
            (``embed(..., sparse=True)``), else ``None``.
    """

    vectors: np.ndarray
    token_counts: tuple[int, ...]
    truncated: tuple[bool, ...]
    pieces: tuple[int, ...]
    sparse: SparseVectors | None = None

    def __post_init__(self) -> None:
        rows = self.vectors.shape[0]
        if self.vectors.ndim != 2 or not len(self.token_counts) == len(self.truncated) == len(self.pieces) == rows:
            raise ValueError(
                f"an EmbedResult needs one count, flag and piece count per vector row: vectors {self.vectors.shape}, "
                f"{len(self.token_counts)} counts, {len(self.truncated)} flags, {len(self.pieces)} piece counts"
            )
        if self.sparse is not None and len(self.sparse) != rows:
            raise ValueError(f"{rows} vectors but {len(self.sparse)} sparse vectors")

    @classmethod
    def empty(cls, hidden_size: int) -> EmbedResult:
        """The result of embedding no texts."""
        return cls(np.empty((0, hidden_size), dtype=np.float32), (), (), ())

    @classmethod
    def concatenate(cls, results: Sequence[EmbedResult]) -> EmbedResult:
        """The results of consecutive calls as one, rows in order."""
        if not results:
            raise ValueError("concatenate needs at least one result")
        sparse = [r.sparse for r in results if r.sparse is not None]
        return cls(
            np.concatenate([r.vectors for r in results]),
            tuple(c for r in results for c in r.token_counts),
            tuple(t for r in results for t in r.truncated),
            tuple(p for r in results for p in r.pieces),
            None if len(sparse) < len(results) else SparseVectors.concatenate(sparse),
        )

    @classmethod
    def average(cls, passes: Sequence[EmbedResult]) -> EmbedResult:
        """Several templates' results for the same texts (MetaEOL): mean vector, tokens summed, any
        truncation, the most pieces, and the sparse vectors' mean."""
        sparse = [p.sparse for p in passes if p.sparse is not None]
        return cls(
            np.asarray(np.mean([p.vectors for p in passes], axis=0, dtype=np.float32)),
            tuple(int(sum(c)) for c in zip(*(p.token_counts for p in passes), strict=True)),
            tuple(any(t) for t in zip(*(p.truncated for p in passes), strict=True)),
            tuple(max(n) for n in zip(*(p.pieces for p in passes), strict=True)),
            None if len(sparse) < len(passes) else mean_of(sparse),
        )

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def __getitem__(self, rows: slice) -> EmbedResult:
        """The rows ``rows`` (a slice) as a result of their own, e.g. one request's share of a batch."""
        if not isinstance(rows, slice):
            raise TypeError(f"an EmbedResult is sliced by a slice of rows, got {type(rows).__name__}")
        sparse = None if self.sparse is None else self.sparse[rows]
        return EmbedResult(self.vectors[rows], self.token_counts[rows], self.truncated[rows], self.pieces[rows], sparse)

    @property
    def total_tokens(self) -> int:
        """Tokens processed for all texts (what a server reports as ``usage.prompt_tokens``)."""
        return sum(self.token_counts)

    @property
    def num_truncated(self) -> int:
        """How many texts were cut to ``max_length``."""
        return sum(self.truncated)

    @property
    def num_split(self) -> int:
        """How many texts ``chunk_mean`` embedded in more than one piece."""
        return sum(p > 1 for p in self.pieces)

    def warn_truncated(self, max_length: int, stacklevel: int = 2) -> None:
        """Warn, as ``encode`` does, if texts were cut to ``max_length`` tokens."""
        if self.num_truncated:
            warnings.warn(
                f"{self.num_truncated} of {len(self)} texts were longer than max_length={max_length} "
                "tokens (prompt included) and were truncated",
                stacklevel=stacklevel + 1,
            )


@dataclass(frozen=True, eq=False)  # arrays have no single truth value: compare fields yourself
class TokenStates:
    """Each text's hidden states at the pooled layer, one row per token the model saw (what a
    server's ``/embed_all`` returns): raw, neither post-processed nor normalised.

    Attributes:
        states: per text, in input order, a ``(n_tokens, hidden_size)`` float32 array: every token
            of its prompted sequence (special tokens, prompt, Token Prepending's placeholder), in
            order, no padding.
        truncated: whether each text was cut to ``max_length``.
    """

    states: tuple[np.ndarray, ...]
    truncated: tuple[bool, ...]

    def __post_init__(self) -> None:
        if len(self.states) != len(self.truncated):
            raise ValueError(
                f"TokenStates needs one flag per text: {len(self.states)} texts, {len(self.truncated)} flags"
            )
        if any(s.ndim != 2 for s in self.states):
            raise ValueError("each text's states must be a (n_tokens, hidden_size) array")

    def __len__(self) -> int:
        return len(self.states)

    @property
    def token_counts(self) -> tuple[int, ...]:
        """Tokens of each text's prompted sequence (the rows of its states)."""
        return tuple(int(s.shape[0]) for s in self.states)

    @property
    def total_tokens(self) -> int:
        """Tokens of all texts (what a server reports as ``usage.prompt_tokens``)."""
        return sum(self.token_counts)
