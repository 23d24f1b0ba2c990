"""Moved: :func:`resolve_layers` lives in :mod:`kv_embeddings_integrations.layer_selection`."""

from .layer_selection import resolve_layers

__all__ = ["resolve_layers"]
