"""Reading the texts a command is given: a ``.txt`` file (one a line) or a ``.jsonl`` file."""

from __future__ import annotations

from pathlib import Path

from ..core.jsonl import iter_jsonl
from .errors import CLIError


def read_texts(path: Path, text_field: str) -> list[str]:
    """Texts from a ``.txt`` file (one per line) or a ``.jsonl`` file (``text_field`` of each object)."""
    if not path.is_file():
        raise CLIError(f"input file not found: {path}")
    if path.suffix == ".jsonl":
        texts = []
        for number, record in iter_jsonl(path, CLIError):
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise CLIError(f"{path}:{number}: no string field {text_field!r}")
            texts.append(record[text_field])
    elif path.suffix == ".txt":
        texts = path.read_text(encoding="utf-8").splitlines()
    else:
        raise CLIError(f"input must be a .txt (one text a line) or .jsonl file, got {path.name}")
    if not texts:
        raise CLIError(f"input file has no texts: {path}")
    return texts
