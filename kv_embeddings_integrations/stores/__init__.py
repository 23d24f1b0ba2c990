"""Vector stores: keep the embedder's identity with the vectors, refuse a mismatched query.

See [`kv_embeddings_integrations.stores.guard`][kv_embeddings_integrations.stores.guard]; the
documentation's *Vector stores* page (``docs/vector-stores.md``) shows Chroma, FAISS, LanceDB and
DuckDB end to end.
"""

from __future__ import annotations

from ..core.identity import EmbedderMismatchError
from .guard import (
    IDENTITY_FILE,
    METADATA_KEY,
    MissingIdentityError,
    arrow_field_metadata,
    collection_metadata,
    identity_of,
    read_identity,
    save_identity,
    verify_arrow_schema,
    verify_collection,
    verify_identity,
)

__all__ = [
    "IDENTITY_FILE",
    "METADATA_KEY",
    "EmbedderMismatchError",
    "MissingIdentityError",
    "arrow_field_metadata",
    "collection_metadata",
    "identity_of",
    "read_identity",
    "save_identity",
    "verify_arrow_schema",
    "verify_collection",
    "verify_identity",
]
