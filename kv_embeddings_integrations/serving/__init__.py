"""An HTTP embedding server in OpenAI's and text-embeddings-inference's shapes (``kv-embed serve``).

The engine ([`engine`][kv_embeddings_integrations.serving.engine]) is apart from the HTTP layer
([`app`][kv_embeddings_integrations.serving.app]): it raises
[`errors`][kv_embeddings_integrations.serving.errors], which
[`http_errors`][kv_embeddings_integrations.serving.http_errors] answers in OpenAI's and TEI's
shapes; [`server`][kv_embeddings_integrations.serving.server] runs it with uvicorn. Needs the
``serve`` extra: ``pip install 'kv-embeddings-integrations[serve]'``. The names below load on first
use, so [`settings`][kv_embeddings_integrations.serving.settings] (pydantic only) imports without
it.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "create_app": ".app",
    "EmbeddingEngine": ".engine",
    "APIError": ".http_errors",
    "ServingError": ".errors",
    "ServerMetrics": ".metrics",
    "API_KEY_ENV": ".settings",
    "ServeSettings": ".settings",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
