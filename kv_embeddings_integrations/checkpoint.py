"""Moved to :mod:`kv_embeddings_integrations.parallel.checkpoint`; this path keeps working."""

from .parallel.checkpoint import MANIFEST, CheckpointError, ChunkedRun, texts_digest

__all__ = ["MANIFEST", "CheckpointError", "ChunkedRun", "texts_digest"]
