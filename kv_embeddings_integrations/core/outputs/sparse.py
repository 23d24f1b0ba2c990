"""Sparse lexical vectors from the same forward pass as the dense one (PromptReps-style).

Zhuang et al. 2024 ("PromptReps") prompt a text to be represented by one word and read the model's
next-token logits at the last position: ``log(1 + relu(z))`` over the vocabulary, kept only for the
token ids that occur in the text. The prompts that end in "in one word:" (the compression prompt,
PromptEOL, Pretended CoT) already end where that word is predicted, so the sparse vector costs one
matrix-vector product with the LM head on top of the dense embedding's pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True, eq=False)  # arrays have no single truth value
class SparseVectors:
    """One sparse vector per text over the model's vocabulary.

    Attributes:
        indices: per text, its token ids with a positive weight (sorted, int64).
        values: per text, the weights of those ids (float32, ``log(1 + relu(logit))``).
        vocab_size: the size of the vocabulary the ids index.
    """

    indices: tuple[np.ndarray, ...]
    values: tuple[np.ndarray, ...]
    vocab_size: int

    def __post_init__(self) -> None:
        if len(self.indices) != len(self.values):
            raise ValueError(f"{len(self.indices)} index arrays but {len(self.values)} value arrays")

    @classmethod
    def empty(cls, vocab_size: int) -> SparseVectors:
        return cls((), (), vocab_size)

    @classmethod
    def concatenate(cls, parts: Sequence[SparseVectors]) -> SparseVectors:
        """The vectors of consecutive calls as one, rows in order."""
        if not parts:
            raise ValueError("concatenate needs at least one part")
        return cls(
            tuple(i for p in parts for i in p.indices), tuple(v for p in parts for v in p.values), parts[0].vocab_size
        )

    @classmethod
    def from_dicts(cls, rows: Iterable[dict[int, float]], vocab_size: int) -> SparseVectors:
        indices: list[np.ndarray] = []
        values: list[np.ndarray] = []
        for row in rows:
            ids = np.array(sorted(row), dtype=np.int64)
            indices.append(ids)
            values.append(np.array([row[i] for i in ids.tolist()], dtype=np.float32))
        return cls(tuple(indices), tuple(values), vocab_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, rows: slice) -> SparseVectors:
        if not isinstance(rows, slice):
            raise TypeError(f"SparseVectors are sliced by a slice of rows, got {type(rows).__name__}")
        return SparseVectors(self.indices[rows], self.values[rows], self.vocab_size)

    def to_dicts(self) -> list[dict[int, float]]:
        """``{token_id: weight}`` per text."""
        return [dict(zip(i.tolist(), v.tolist(), strict=True)) for i, v in zip(self.indices, self.values, strict=True)]

    def to_csr(self) -> csr_matrix[np.float32]:
        """A SciPy CSR matrix of shape ``(len(self), vocab_size)`` (needs SciPy)."""
        from scipy.sparse import csr_matrix

        pointers = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum([len(i) for i in self.indices], out=pointers[1:])
        empty_ids, empty_values = np.empty(0, np.int64), np.empty(0, np.float32)
        ids = np.concatenate(self.indices) if len(self) else empty_ids
        values = np.concatenate(self.values) if len(self) else empty_values
        return csr_matrix((values, ids, pointers), shape=(len(self), self.vocab_size))

    def decode(self, tokenizer: PreTrainedTokenizerBase, top: int | None = None) -> list[list[tuple[str, float]]]:
        """Each text's tokens as strings with their weights, heaviest first (for reading them)."""
        out = []
        for ids, values in zip(self.indices, self.values, strict=True):
            order = np.argsort(-values)[:top]
            # One id in, one token out (transformers types the return as str | list[str] for both).
            out.append([(cast(str, tokenizer.convert_ids_to_tokens(int(ids[k]))), float(values[k])) for k in order])
        return out


def mean_of(passes: Sequence[SparseVectors]) -> SparseVectors:
    """Several templates' sparse vectors of the same texts, averaged (MetaEOL's several prompts)."""
    if len(passes) == 1:
        return passes[0]
    rows = []
    for parts in zip(*(p.to_dicts() for p in passes), strict=True):
        merged: dict[int, float] = {}
        for part in parts:
            for token, weight in part.items():
                merged[token] = merged.get(token, 0.0) + weight / len(parts)
        rows.append(merged)
    return SparseVectors.from_dicts(rows, passes[0].vocab_size)


def lm_head_weight(model: PreTrainedModel) -> torch.Tensor:
    """The ``(vocab, hidden)`` matrix that turns a final hidden state into next-token logits.

    A ``*ForCausalLM``'s output embeddings, or a base model's input embeddings when the model ties
    them (Gemma, SmolLM2, Qwen3 up to 4B); a base model with an untied head has none.
    """
    head: torch.nn.Module | None = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        return _weight(head)
    if getattr(model.config.get_text_config(), "tie_word_embeddings", False):
        return _weight(model.get_input_embeddings())
    raise ValueError(
        f"sparse vectors need the model's LM head, and this {type(model).__name__} has none (its word "
        "embeddings are not tied): pass the *ForCausalLM model, e.g. "
        "KVEmbedder(AutoModelForCausalLM.from_pretrained(name), tokenizer)"
    )


def _weight(embeddings: torch.nn.Module) -> torch.Tensor:
    # An embedding or linear layer's weight (torch types a module's attributes as Tensor | Module).
    return cast(torch.Tensor, embeddings.weight)


def lexical_weights(
    last_state: torch.Tensor,
    head: torch.Tensor,
    input_ids: torch.Tensor,
    text_mask: torch.Tensor,
    softcap: float | None = None,
) -> torch.Tensor:
    """PromptReps weights of each position's own token: ``(batch, seq)`` float32, 0 outside the text.

    Args:
        last_state: ``(batch, hidden)`` final hidden state (after the final norm) at the last position.
        head: the LM head's ``(vocab, hidden)`` weight.
        input_ids: ``(batch, seq)`` token ids.
        text_mask: ``(batch, seq)`` bool, the text's tokens (the prompt's are not the text's words).
        softcap: the model's final logit soft-capping (Gemma 2), if any.
    """
    logits = (last_state.to(head.dtype) @ head.T).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    weights = torch.log1p(torch.relu(logits)).gather(1, input_ids)
    return torch.where(text_mask, weights, 0.0)


def rows_to_sparse(
    input_ids: torch.Tensor, weights: torch.Tensor, text_mask: torch.Tensor
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One ``(ids, weights)`` pair per row: each distinct text token once, zero weights dropped."""
    out = []
    for ids, w, mask in zip(input_ids.cpu(), weights.float().cpu(), text_mask.cpu(), strict=True):
        ids, w = ids[mask], w[mask]
        unique, inverse = torch.unique(ids, return_inverse=True)  # sorted
        # A token's weight is the same wherever it occurs in the text (one logit per id).
        best = torch.zeros(len(unique)).scatter_reduce(0, inverse, w, reduce="amax", include_self=False)
        keep = best > 0
        out.append((unique[keep].numpy().astype(np.int64), best[keep].numpy().astype(np.float32)))
    return out


def merge_max(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One text's pieces (``long_text="chunk_mean"``) as one sparse vector: each token's largest weight."""
    if len(parts) == 1:
        return parts[0]
    merged: dict[int, float] = {}
    for ids, values in parts:
        for token, weight in zip(ids.tolist(), values.tolist(), strict=True):
            merged[token] = max(merged.get(token, 0.0), weight)
    ids = np.array(sorted(merged), dtype=np.int64)
    return ids, np.array([merged[i] for i in ids.tolist()], dtype=np.float32)
