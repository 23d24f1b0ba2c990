"""Text embeddings from any frozen decoder-only LLM by KV re-routing (KV-Embedding, arXiv 2601.01046)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .core.config import PRESETS, EmbedderConfig
from .core.embedder import KVEmbedder
from .core.method.rerouting import UnsupportedModelError
from .core.model.bundled import BUNDLED_MODELS, DEFAULT_MODEL
from .core.model.loading import LoadOptions
from .core.results import EmbedResult
from .version import __version__ as __version__

if TYPE_CHECKING:
    from .integrations.langchain import KVEmbeddings
    from .integrations.llama_index import KVEmbedding

__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "EmbedResult",
    "EmbedderConfig",
    "KVEmbedder",
    "KVEmbedding",
    "KVEmbeddings",
    "LoadOptions",
    "PRESETS",
    "UnsupportedModelError",
]

# The adapters import their frameworks (seconds of import time), so they load on first use.
_ADAPTERS = {"KVEmbeddings": ".integrations.langchain", "KVEmbedding": ".integrations.llama_index"}


def __getattr__(name: str) -> Any:
    if name in _ADAPTERS:
        import importlib

        return getattr(importlib.import_module(_ADAPTERS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
