"""The ``--methods`` spec: method names with options, parsed into ``(label, options)`` variants."""

from __future__ import annotations

import re
from typing import Any

from ..core.config import EmbedderConfig

FITS = ("builtin", "corpus", "sides")
"""Where a variant's post-processing is fitted (the eval-only option ``fit``): on the built-in
calibration texts (what the package does), on the task's own corpus (documents, or all of an
STS / classification task's texts), or on each side apart (queries by the queries' fit)."""


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
    [`FITS`][kv_embeddings_integrations.evaluation.variants.FITS]) says where the post-processing
    is fitted.
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
