"""Moved to :mod:`kv_embeddings_integrations.parallel.pool`; this path keeps working.

Its names are re-exported; to change a setting (a constant), change it in the new module.
"""

from .parallel.pool import (
    CHUNKS_PER_WORKER,
    CLOSE_TIMEOUT_SECONDS,
    FAILURE_CLOSE_TIMEOUT_SECONDS,
    MAX_CHUNK_SIZE,
    POLL_SECONDS,
    PROGRESS_BAR_MIN_CHUNKS,
    EmbeddingPool,
)

__all__ = [
    "CHUNKS_PER_WORKER",
    "CLOSE_TIMEOUT_SECONDS",
    "FAILURE_CLOSE_TIMEOUT_SECONDS",
    "MAX_CHUNK_SIZE",
    "POLL_SECONDS",
    "PROGRESS_BAR_MIN_CHUNKS",
    "EmbeddingPool",
]
