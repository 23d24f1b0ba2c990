"""What ``encode`` accepts, checked before any work: the defined behaviour for every kind of bad input.

- Not a string and not an iterable of strings (``None``, ``bytes``, a number): ``TypeError``.
- An item that is not a ``str`` (``None``, ``bytes``, a number...): ``TypeError`` naming its index.
- Empty and whitespace-only strings: embedded as they are (the prompt alone, or the prompt around
  the whitespace), or ``ValueError`` naming their indices with ``empty_text="error"``.
- Unpaired UTF-16 surrogates (``"\\ud800"``, which UTF-8 cannot encode): each replaced by U+FFFD,
  with one warning per call; pairs that form a valid character are joined. Control characters are
  ordinary characters: the tokenizer encodes them.
- Over-long texts are cut (``long_text="truncate"``) or embedded in pieces (``"chunk_mean"``): the
  embedder's concern, after tokenization.
- Token ids given instead of a text (a server's ``inputs: [[101, 2023, ...]]``): a
  [`TokenIds`][kv_embeddings_integrations.core.running.inputs.TokenIds], a ``str`` (its decoded
  text, what the checks above and the lexical channel read) that carries the ids, which the embedder
  splices into the prompt as they are (see
  [`splits`][kv_embeddings_integrations.core.running.tokenization.PromptTokenizer.splits]).
"""

from __future__ import annotations

import operator
import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

EMPTY_TEXT_POLICIES = ("embed", "error")
_SURROGATE = re.compile("[\ud800-\udfff]")
# How many offending indices an error message lists.
_SHOWN = 10


class TokenIds(str):
    """Token ids to embed exactly as given, in place of a text.

    Built as ``TokenIds(ids, text)``: the token ids (non-negative ints) and their decoded text.
    The ``str`` value is ``text``: what every place that needs a plain text reads (error messages,
    the empty-text check, the lexical channel). ``ids`` are what the model sees: the prompt's
    pieces are tokenized on their own and the ids put where each ``{text}`` is
    ([`splits`][kv_embeddings_integrations.core.running.tokenization.PromptTokenizer.splits]); a
    template that does not split so embeds ``text`` instead, as any string.
    """

    ids: tuple[int, ...]

    def __new__(cls, ids: Sequence[int], text: str) -> TokenIds:
        if isinstance(ids, (str, bytes, bytearray)) or not isinstance(ids, Iterable):
            raise TypeError(f"TokenIds needs a sequence of token ids, got {type(ids).__name__}")
        if not isinstance(text, str):
            raise TypeError(f"TokenIds needs the ids' text as a str, got {type(text).__name__}")
        checked = []
        for index, value in enumerate(ids):
            if isinstance(value, bool):
                raise TypeError(f"token id [{index}] is a bool, not an int")
            try:
                token = operator.index(value)
            except TypeError:
                raise TypeError(f"token id [{index}] is {type(value).__name__}, not an int") from None
            if token < 0:
                raise ValueError(f"token id [{index}] is negative ({token})")
            checked.append(token)
        self = super().__new__(cls, text)
        self.ids = tuple(checked)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.ids, str(self)))

    def __repr__(self) -> str:
        return f"TokenIds({list(self.ids)!r}, {str.__repr__(self)})"


def _indices(indices: list[int]) -> str:
    shown = ", ".join(map(str, indices[:_SHOWN]))
    return shown + (f", ... ({len(indices)} in all)" if len(indices) > _SHOWN else "")


def check_texts(texts: Iterable[str]) -> list[str]:
    """The items of ``texts`` as a list, each checked to be a ``str``."""
    if isinstance(texts, (bytes, bytearray, memoryview)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a string or an iterable of strings, got {type(texts).__name__}")
    items = list(texts)
    for index, item in enumerate(items):
        if not isinstance(item, str):
            kind = "None" if item is None else type(item).__name__
            raise TypeError(f"texts[{index}] is {kind}, not str")
    return items


def texts_to_embed(texts: str | Iterable[str], empty_text: str = "embed") -> tuple[list[str], bool]:
    """What every ``encode`` entry point embeds: the checked, repaired texts, and whether one bare
    string was given (then the caller returns one vector, not a matrix)."""
    if isinstance(texts, str):
        return prepare_texts([texts], empty_text, stacklevel=4), True
    return prepare_texts(check_texts(texts), empty_text, stacklevel=4), False


def repair_surrogates(text: str) -> str:
    """``text`` with unpaired surrogates replaced by U+FFFD (valid surrogate pairs are joined); a
    [`TokenIds`][kv_embeddings_integrations.core.running.inputs.TokenIds] stays one, its ids
    unchanged (only its text is repaired)."""
    repaired = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(text, TokenIds):
        return text if repaired == text else TokenIds(text.ids, repaired)
    return repaired


def prepare_texts(items: list[str], empty_text: str = "embed", stacklevel: int = 3) -> list[str]:
    """Apply the empty-text policy and repair unencodable characters (see the module docstring)."""
    if empty_text not in EMPTY_TEXT_POLICIES:
        raise ValueError(f"empty_text must be one of {EMPTY_TEXT_POLICIES}, got {empty_text!r}")
    if empty_text == "error":
        empty = [i for i, text in enumerate(items) if not text.strip()]
        if empty:
            raise ValueError(f"texts {_indices(empty)} are empty or whitespace only (empty_text='error')")
    repaired = [i for i, text in enumerate(items) if _SURROGATE.search(text)]
    if not repaired:
        return items
    warnings.warn(
        f"texts {_indices(repaired)} hold unpaired UTF-16 surrogates, which no tokenizer can encode; "
        "they were replaced by U+FFFD",
        stacklevel=stacklevel,
    )
    items = list(items)
    for i in repaired:
        items[i] = repair_surrogates(items[i])
    return items
