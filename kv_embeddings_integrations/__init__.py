"""Text embeddings from any frozen decoder-only LLM by KV re-routing (KV-Embedding, arXiv 2601.01046)."""

from .bundled import BUNDLED_MODELS, DEFAULT_MODEL
from .config import EmbedderConfig
from .embedder import KVEmbedder
from .rerouting import UnsupportedModelError

__all__ = ["BUNDLED_MODELS", "DEFAULT_MODEL", "EmbedderConfig", "KVEmbedder", "UnsupportedModelError"]
__version__ = "0.1.0"
