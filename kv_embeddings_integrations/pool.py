"""Moved to :mod:`kv_embeddings_integrations.parallel.pool`; this path keeps working."""

from .parallel.pool import EmbeddingPool

__all__ = ["EmbeddingPool"]
