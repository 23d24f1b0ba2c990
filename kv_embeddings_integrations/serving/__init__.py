"""An HTTP embedding server in OpenAI's and text-embeddings-inference's shapes (``kv-embed serve``).

The engine (:mod:`.engine`) is apart from the HTTP layer (:mod:`.app`); :mod:`.server` runs it
with uvicorn. Needs the ``serve`` extra: ``pip install 'kv-embeddings-integrations[serve]'``.
"""

from .app import create_app
from .engine import EmbeddingEngine
from .errors import APIError
from .metrics import ServerMetrics
from .settings import API_KEY_ENV, ServeSettings

__all__ = ["API_KEY_ENV", "APIError", "EmbeddingEngine", "ServeSettings", "ServerMetrics", "create_app"]
