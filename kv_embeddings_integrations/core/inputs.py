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
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable

EMPTY_TEXT_POLICIES = ("embed", "error")
_SURROGATE = re.compile("[\ud800-\udfff]")
# How many offending indices an error message lists.
_SHOWN = 10


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


def check_positive_int(name: str, value: int | None) -> None:
    """``value`` must be ``None`` or a positive int (not a bool)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def repair_surrogates(text: str) -> str:
    """``text`` with unpaired surrogates replaced by U+FFFD (valid surrogate pairs are joined)."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


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
