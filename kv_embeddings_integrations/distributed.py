"""Moved to :mod:`kv_embeddings_integrations.parallel.ray_data`; this path keeps working."""

from .parallel.ray_data import (
    DEFAULT_BATCH_SIZE,
    FORMATS,
    DatasetEmbedder,
    embed_dataset,
    require_ray,
    resolve_input,
)

__all__ = ["DEFAULT_BATCH_SIZE", "FORMATS", "DatasetEmbedder", "embed_dataset", "require_ray", "resolve_input"]
