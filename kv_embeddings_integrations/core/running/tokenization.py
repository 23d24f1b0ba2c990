"""Turning texts into prompted token sequences, with truncation that cuts the text, not the prompt.

Token ids given as input (a [`TokenIds`][kv_embeddings_integrations.core.running.inputs.TokenIds])
are spliced into the prompt as they are: see
[`splits`][kv_embeddings_integrations.core.running.tokenization.PromptTokenizer.splits].
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..prompts import PLACEHOLDER, render
from .inputs import TokenIds

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedTokenizerBase

# Tokens kept spare in each piece of a split text (see PromptTokenizer.split).
SPLIT_MARGIN = 4
# The text whose ids decide whether a template splits (see PromptTokenizer.splits).
SPLICE_PROBE = "hello world"


@dataclass
class EncodedText:
    """One prompted text as token ids, and which tokens belong to its (last) copy of the text."""

    input_ids: list[int]
    text_start: int
    text_end: int
    truncated: bool = False
    # Token Prepending's placeholder position, when the tokenizer inserts one.
    marker: int | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenBatch:
    """Left-padded tensors for one forward pass: every row's final real token is at position -1."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    text_mask: torch.Tensor
    # (batch,) column of each row's Token Prepending placeholder, or None.
    marker_index: torch.Tensor | None = None
    # Whether the pass also computes each position's lexical weight (sparse vectors).
    lexical: bool = False

    def rows(self, start: int, stop: int) -> TokenBatch:
        """Rows ``start:stop``, at the same padded width."""
        tensors = (self.input_ids, self.attention_mask, self.position_ids, self.text_mask)
        marker = None if self.marker_index is None else self.marker_index[start:stop]
        input_ids, attention_mask, position_ids, text_mask = (t[start:stop] for t in tensors)
        return TokenBatch(input_ids, attention_mask, position_ids, text_mask, marker_index=marker, lexical=self.lexical)


def _token_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """Token index span ``[first, last)`` of the tokens overlapping characters ``[start, end)``."""
    inside = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
    if not inside:
        # An empty text: the span is empty, placed where the text would be.
        after = [i for i, (s, e) in enumerate(offsets) if e > s and s >= start]
        position = after[0] if after else len(offsets)
        return position, position
    return inside[0], inside[-1] + 1


class PromptTokenizer:
    """Renders templates and tokenizes them; cuts over-long texts so the prompt survives intact.

    With ``placeholder_id``, one more token (Token Prepending's placeholder) is inserted before
    the token that precedes the text (the opening quote in ``... : "{text}" ...``); ``max_length``
    still bounds the whole sequence.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, placeholder_id: int | None = None) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(
                f"{type(tokenizer).__name__} is a slow tokenizer; a fast (Rust) tokenizer is needed for "
                "character offsets. Load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
            )
        self.tokenizer = tokenizer
        self.placeholder_id = placeholder_id
        # Room for the placeholder: every sequence is rendered to at most this many tokens first.
        self.max_length = max_length - (placeholder_id is not None)
        if self.max_length < 1:
            raise ValueError(f"max_length={max_length} leaves no room for a text")
        # A fast tokenizer mutates its truncation/padding state inside calls: one caller at a time.
        self._lock = threading.Lock()
        # Per template: its pieces' ids (None: it does not splice token ids; see splits).
        self._pieces: dict[str, list[list[int]] | None] = {}
        self._edges: tuple[list[int], list[int]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self.__dict__.setdefault("_pieces", {})  # pickled before token ids were spliced
        self.__dict__.setdefault("_edges", None)

    def _tokenize(self, strings: list[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
        with self._lock:
            out = self.tokenizer(strings, add_special_tokens=True, return_offsets_mapping=True, truncation=False)
        return out["input_ids"], [[tuple(o) for o in row] for row in out["offset_mapping"]]

    def fingerprint(self) -> str:
        """SHA-256 of the tokenizer's definition (its serialized pipeline and vocabulary): equal for
        tokenizers that split every text alike, whatever folder they were loaded from."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            definition = backend.to_str()
        else:  # a slow tokenizer: its vocabulary
            definition = json.dumps(sorted(self.tokenizer.get_vocab().items()))
        return hashlib.sha256(definition.encode("utf-8")).hexdigest()

    def token_ids(self, strings: list[str]) -> list[list[int]]:
        """Each string's token ids alone: no prompt, no special tokens, no cut."""
        with self._lock:
            ids: list[list[int]] = self.tokenizer(strings, add_special_tokens=False, truncation=False)["input_ids"]
        return ids

    def tokenize_strings(self, strings: list[str], add_special_tokens: bool = True) -> BatchEncoding:
        """The tokenizer's own output for whole strings, with character offsets and the
        special-token mask (what a server's ``/tokenize`` shows), taken under the same lock as
        [`encode`][kv_embeddings_integrations.core.running.tokenization.PromptTokenizer.encode]."""
        with self._lock:
            out: BatchEncoding = self.tokenizer(
                strings,
                add_special_tokens=add_special_tokens,
                return_offsets_mapping=True,
                return_special_tokens_mask=True,
                truncation=False,
            )
        return out

    def special_edges(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before and after any string (a BOS, an EOS...),
        read off its special-tokens mask."""
        if self._edges is None:
            out = self.tokenize_strings([SPLICE_PROBE])
            ids, mask = out["input_ids"][0], out["special_tokens_mask"][0]
            real = [i for i, special in enumerate(mask) if not special]
            if not real:  # nothing but special tokens: read none as edges
                self._edges = ([], [])
            else:
                self._edges = (list(ids[: real[0]]), list(ids[real[-1] + 1 :]))
        return self._edges

    def splits(self, template: str) -> bool:
        """Whether ``template`` splices token ids: token ids given as input (a
        [`TokenIds`][kv_embeddings_integrations.core.running.inputs.TokenIds]) are embedded exactly
        as given.

        The template is split at its ``{text}`` placeholders; each piece is tokenized on its own
        (no special tokens), the tokenizer's own leading and trailing special tokens go around,
        and the ids go where each ``{text}`` is. A template splits when that sequence, for the ids
        of a probe text, decodes back to exactly the rendered prompt (it does not for a
        tokenizer that adds a dummy prefix space to each piece, as SentencePiece ones may); one
        that does not embeds a ``TokenIds`` as its text. Decided once per template.
        """
        return self._template_pieces(template) is not None

    def _template_pieces(self, template: str) -> list[list[int]] | None:
        if template in self._pieces:
            return self._pieces[template]
        pieces = self.token_ids(template.split(PLACEHOLDER))
        lead, trail = self.special_edges()
        (probe,) = self.token_ids([SPLICE_PROBE])
        spliced = self._spliced(probe, pieces, lead, trail)
        with self._lock:
            decoded = self.tokenizer.decode(spliced, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        result = pieces if decoded == render(template, SPLICE_PROBE)[0] else None
        self._pieces[template] = result
        return result

    @staticmethod
    def _spliced(ids: list[int], pieces: list[list[int]], lead: list[int], trail: list[int]) -> list[int]:
        out = list(lead) + pieces[0]
        for piece in pieces[1:]:
            out += ids
            out += piece
        return out + list(trail)

    def decode(self, ids: list[int]) -> str:
        """The text of token ids, as the tokenizer decodes them (special tokens kept)."""
        with self._lock:
            text = self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        assert isinstance(text, str)  # one sequence of ids gives one string
        return text

    def _encode_ids(self, item: TokenIds, template: str, pieces: list[list[int]], truncate: bool) -> EncodedText:
        """``item``'s ids spliced into ``template`` (see
        [`splits`][kv_embeddings_integrations.core.running.tokenization.PromptTokenizer.splits]),
        the last copy marked as the text."""
        lead, trail = self.special_edges()
        copies = len(pieces) - 1
        prompt = len(lead) + len(trail) + sum(len(p) for p in pieces)
        ids = list(item.ids)
        truncated = prompt + copies * len(ids) > self.max_length
        if truncated and truncate:
            if prompt > self.max_length:
                raise ValueError(
                    f"max_length={self.max_length} is too small: the prompt template {template!r} alone takes "
                    f"{prompt} tokens. Raise max_length or shorten the template."
                )
            ids = ids[: (self.max_length - prompt) // copies]
        input_ids = self._spliced(ids, pieces, lead, trail)
        end = len(input_ids) - len(trail) - len(pieces[-1])
        return EncodedText(input_ids, end - len(ids), end, truncated)

    def encode(self, texts: list[str], template: str, truncate: bool = True) -> list[EncodedText]:
        """Prompted token ids of ``texts``; over-long ones are cut to ``max_length`` (or, with
        ``truncate=False``, left whole and only flagged ``truncated``, for the caller to split)."""
        encoded = self._encode(texts, template, truncate)
        placeholder_id = self.placeholder_id
        if placeholder_id is None:
            return encoded
        return [self._with_placeholder(e, placeholder_id) for e in encoded]

    @staticmethod
    def _with_placeholder(e: EncodedText, placeholder_id: int) -> EncodedText:
        at = max(e.text_start - 1, 0)  # at or before the text: the text moves one token right
        ids = e.input_ids[:at] + [placeholder_id] + e.input_ids[at:]
        return EncodedText(ids, e.text_start + 1, e.text_end + 1, e.truncated, marker=at)

    def _encode(self, texts: list[str], template: str, truncate: bool) -> list[EncodedText]:
        given = [i for i, text in enumerate(texts) if isinstance(text, TokenIds)]
        pieces = self._template_pieces(template) if given else None
        if pieces is None:  # no token ids, or a template that does not splice them: all texts
            return self._encode_texts(texts, template, truncate)
        spliced = set(given)
        plain = self._encode_texts([t for i, t in enumerate(texts) if i not in spliced], template, truncate)
        rest = iter(plain)
        return [
            self._encode_ids(text, template, pieces, truncate) if isinstance(text, TokenIds) else next(rest)
            for text in texts
        ]

    def _encode_texts(self, texts: list[str], template: str, truncate: bool) -> list[EncodedText]:
        if not texts:
            return []
        rendered = [render(template, text) for text in texts]
        ids, offsets = self._tokenize([r[0] for r in rendered])
        encoded = []
        for text, (_, spans), row_ids, row_offsets in zip(texts, rendered, ids, offsets, strict=True):
            if len(row_ids) <= self.max_length:
                encoded.append(EncodedText(row_ids, *_token_span(row_offsets, *spans[-1])))
            elif truncate:
                encoded.append(self._truncate(text, template))
            else:
                encoded.append(EncodedText(row_ids, *_token_span(row_offsets, *spans[-1]), truncated=True))
        return encoded

    def split(self, text: str, template: str) -> list[str]:
        """``text`` cut at token boundaries into pieces that each fit ``max_length`` with the prompt
        (``long_text="chunk_mean"``). A text that fits is one piece. Token ids (a
        [`TokenIds`][kv_embeddings_integrations.core.running.inputs.TokenIds]) that ``template``
        splices are cut into runs of ids that fit, each a ``TokenIds`` whose text is its ids
        decoded."""
        pieces = self._template_pieces(template) if isinstance(text, TokenIds) else None
        if pieces is not None:
            assert isinstance(text, TokenIds)
            return self._split_ids(text, template, pieces)
        rendered, spans = render(template, text)
        (row_ids,), (row_offsets,) = self._tokenize([rendered])
        if len(row_ids) <= self.max_length:
            return [text]
        first, last = _token_span(row_offsets, *spans[0])
        tokens = last - first
        prompt = len(row_ids) - tokens * len(spans)
        # Room for one copy of a piece (echo holds two); a few tokens spare, as re-tokenizing a
        # piece on its own can merge or split a token at its edges.
        budget = (self.max_length - prompt) // len(spans) - SPLIT_MARGIN
        if budget < 1:
            raise ValueError(
                f"max_length={self.max_length} is too small to embed pieces of a long text: the prompt "
                f"template {template!r} takes {prompt} tokens. Raise max_length or shorten the template."
            )
        # Piece boundaries: every `budget`-th token's first character (byte-level tokens of one
        # character share it: such a boundary moves to the next distinct character).
        cuts = [0]  # character indices in text
        for k in range(budget, tokens, budget):
            char = row_offsets[first + k][0] - spans[0][0]
            if char > cuts[-1]:
                cuts.append(char)
        bounds = cuts + [len(text)]
        return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]

    def _split_ids(self, item: TokenIds, template: str, pieces: list[list[int]]) -> list[str]:
        lead, trail = self.special_edges()
        copies = len(pieces) - 1
        prompt = len(lead) + len(trail) + sum(len(p) for p in pieces)
        if prompt + copies * len(item.ids) <= self.max_length:
            return [item]
        budget = (self.max_length - prompt) // copies
        if budget < 1:
            raise ValueError(
                f"max_length={self.max_length} is too small to embed pieces of a long text: the prompt "
                f"template {template!r} takes {prompt} tokens. Raise max_length or shorten the template."
            )
        runs = [list(item.ids[i : i + budget]) for i in range(0, len(item.ids), budget)]
        return [TokenIds(run, self.decode(run)) for run in runs]

    def _truncate(self, text: str, template: str) -> EncodedText:
        # Each round drops about the excess from every copy of the text; the token count after
        # re-tokenizing a cut string can differ by a token or two, hence the loop.
        for _ in range(8):
            rendered, spans = render(template, text)
            (row_ids,), (row_offsets,) = self._tokenize([rendered])
            excess = len(row_ids) - self.max_length
            if excess <= 0:
                return EncodedText(row_ids, *_token_span(row_offsets, *spans[-1]), truncated=True)
            if not text:
                break
            first, last = _token_span(row_offsets, *spans[0])
            keep = (last - first) - math.ceil(excess / len(spans))
            if keep <= 0:
                text = ""
            else:
                cut = row_offsets[first + keep][0] - spans[0][0]
                # Guarantee progress even if the cut falls inside the first token.
                text = text[: max(0, min(cut, len(text) - 1))]
        raise ValueError(
            f"max_length={self.max_length} is too small: the prompt template {template!r} alone takes "
            f"{len(row_ids)} tokens. Raise max_length or shorten the template."
        )


def collate(encoded: list[EncodedText], pad_token_id: int, device: torch.device | str) -> TokenBatch:
    """Left-pad a batch; real tokens get positions 0..n-1 whatever their padding."""
    width = max(len(e) for e in encoded)
    input_ids = torch.full((len(encoded), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    text_mask = torch.zeros((len(encoded), width), dtype=torch.bool)
    markers = [e.marker for e in encoded]
    if any(m is not None for m in markers) and any(m is None for m in markers):
        raise ValueError("cannot batch texts with and without a Token Prepending placeholder")
    marker_index = None if markers[0] is None else torch.empty(len(encoded), dtype=torch.long)
    for row, e in enumerate(encoded):
        pad = width - len(e)
        input_ids[row, pad:] = torch.tensor(e.input_ids, dtype=torch.long)
        attention_mask[row, pad:] = 1
        text_mask[row, pad + e.text_start : pad + e.text_end] = True
        if marker_index is not None and e.marker is not None:  # all rows have one (checked above)
            marker_index[row] = pad + e.marker
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return TokenBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        text_mask=text_mask.to(device),
        marker_index=None if marker_index is None else marker_index.to(device),
    )
