"""Keep the embedder's identity with stored vectors, and check it before querying them.

Three places a record can live, by what the store offers:

- **collection metadata** (Chroma):
  [`collection_metadata`][kv_embeddings_integrations.stores.guard.collection_metadata] when creating
  the collection, [`verify_collection`][kv_embeddings_integrations.stores.guard.verify_collection]
  after opening it;
- **Arrow schema metadata** on the embedding column (Parquet from ``kv-embed embed-dataset``,
  LanceDB tables made from it):
  [`arrow_field_metadata`][kv_embeddings_integrations.stores.guard.arrow_field_metadata],
  [`verify_arrow_schema`][kv_embeddings_integrations.stores.guard.verify_arrow_schema];
- **a small JSON file beside the store** (FAISS ``save_local`` folders, LanceDB directories,
  LlamaIndex persist directories):
  [`save_identity`][kv_embeddings_integrations.stores.guard.save_identity],
  [`verify_identity`][kv_embeddings_integrations.stores.guard.verify_identity].

Every ``verify_*`` raises
[`EmbedderMismatchError`][kv_embeddings_integrations.core.identity.EmbedderMismatchError] naming
what differs when the querying embedder would not make the stored vectors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ..core.cache import write_atomically
from ..core.identity import METADATA_KEY, EmbedderMismatchError, check_identity, field_metadata

# Leading underscore: Arrow, Spark and Ray dataset readers skip it as not data.
IDENTITY_FILE = "_kv_embed_identity.json"


class MissingIdentityError(LookupError):
    """The store holds no embedder record (made without one, or by another tool)."""


class HasIdentity(Protocol):
    """What the guard needs of an embedder: a
    [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder], ``KVEmbeddings``
    (LangChain), ``KVEmbedding`` (LlamaIndex) or the Haystack components."""

    def identity(self) -> dict[str, Any]: ...


# An embedder, or an identity record already made.
IdentitySource = HasIdentity | Mapping[str, Any]


def identity_of(embeddings: IdentitySource) -> dict[str, Any]:
    """The identity record of a [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder],
    ``KVEmbeddings`` (LangChain) or ``KVEmbedding`` (LlamaIndex), or a record already made."""
    if isinstance(embeddings, Mapping):
        return dict(embeddings)
    identity = getattr(embeddings, "identity", None)
    if not callable(identity):
        raise TypeError(
            "expected a KVEmbedder, KVEmbeddings or KVEmbedding (something with .identity()), "
            f"got {type(embeddings).__name__}"
        )
    return identity()


def _parse(text: str | bytes, where: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except ValueError as e:
        raise EmbedderMismatchError(f"{where} has an unreadable embedder record: {e}") from None
    if not isinstance(record, dict):
        raise EmbedderMismatchError(f"{where} has an embedder record that is not a JSON object")
    return record


def _verify(record: dict[str, Any], embeddings: IdentitySource, where: str) -> dict[str, Any]:
    check_identity(record, identity_of(embeddings), where=where)
    return record


# --- a JSON file beside the store -----------------------------------------------------------


def save_identity(folder: str | os.PathLike, embeddings: IdentitySource, *, overwrite: bool = False) -> Path:
    """Write the embedder's record into ``folder`` (created if needed); return the file's path.

    Args:
        folder: the store's folder (a FAISS ``save_local`` folder, a LanceDB directory...).
        embeddings: the embedder that filled the store.
        overwrite: replace a record of another configuration. Off: adding vectors of one
            configuration to a store of another would leave a mixed store under a clean record, so
            that raises
            [`EmbedderMismatchError`][kv_embeddings_integrations.core.identity.EmbedderMismatchError]
            instead.
    """
    path = Path(folder) / IDENTITY_FILE
    record = identity_of(embeddings)
    if not overwrite and path.exists():
        check_identity(read_identity(folder), record, where=f"the store in {folder}")
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    write_atomically(path, lambda f: f.write(text.encode("utf-8")))
    return path


def read_identity(folder: str | os.PathLike) -> dict[str, Any]:
    """The record [`save_identity`][kv_embeddings_integrations.stores.guard.save_identity] wrote into ``folder``.

    Raises:
        MissingIdentityError: there is none.
    """
    path = Path(folder) / IDENTITY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingIdentityError(
            f"no embedder record ({IDENTITY_FILE}) in {folder}: the store was not saved with save_identity(), "
            "so nothing says which embedder made its vectors"
        ) from None
    return _parse(text, str(path))


def verify_identity(folder: str | os.PathLike, embeddings: IdentitySource) -> dict[str, Any]:
    """Check that ``embeddings`` makes the vectors stored in ``folder``; return the stored record.

    Raises:
        MissingIdentityError: ``folder`` holds no record.
        EmbedderMismatchError: the record differs; the message names each differing field.
    """
    return _verify(read_identity(folder), embeddings, f"the store in {folder}")


# --- collection metadata (Chroma) ----------------------------------------------------------


def collection_metadata(embeddings: IdentitySource, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``metadata`` plus the embedder's record (a JSON string: Chroma takes flat scalar values), for
    ``collection_metadata=`` (LangChain ``Chroma``) or ``get_or_create_collection(metadata=)``."""
    return {**(metadata or {}), METADATA_KEY: json.dumps(identity_of(embeddings), sort_keys=True)}


def _collection(store: Any) -> Any:
    # LangChain's Chroma and LlamaIndex's ChromaVectorStore both hold the chromadb collection.
    for name in ("_collection", "collection"):
        inner = getattr(store, name, None)
        if inner is not None and hasattr(inner, "metadata"):
            return inner
    return store


def verify_collection(store: Any, embeddings: IdentitySource) -> dict[str, Any]:
    """Check a Chroma collection's record against ``embeddings``; return the record.

    Args:
        store: a chromadb ``Collection``, a LangChain ``Chroma`` or a LlamaIndex ``ChromaVectorStore``.
        embeddings: the embedder about to query it.

    Raises:
        MissingIdentityError: the collection's metadata holds no record.
        EmbedderMismatchError: the record differs.
    """
    collection = _collection(store)
    name = getattr(collection, "name", "?")
    text = (getattr(collection, "metadata", None) or {}).get(METADATA_KEY)
    if text is None:
        raise MissingIdentityError(
            f"Chroma collection {name!r} has no {METADATA_KEY!r} metadata: create it with "
            "collection_metadata(embeddings) so the embedder that made its vectors is known"
        )
    return _verify(_parse(text, f"Chroma collection {name!r}"), embeddings, f"Chroma collection {name!r}")


# --- Arrow schema metadata (Parquet, LanceDB) ----------------------------------------------


def arrow_field_metadata(embeddings: IdentitySource) -> dict[bytes, bytes]:
    """Field metadata for the embedding column of an Arrow table (kept by Parquet and LanceDB)."""
    return field_metadata(identity_of(embeddings))


def verify_arrow_schema(schema: Any, embeddings: IdentitySource, column: str = "embedding") -> dict[str, Any]:
    """Check the record on ``column`` of a ``pyarrow.Schema`` (``pq.read_schema(path)``,
    ``lancedb_table.schema``) against ``embeddings``; return the record.

    Raises:
        KeyError: no such column.
        MissingIdentityError: the column carries no record.
        EmbedderMismatchError: the record differs.
    """
    if column not in schema.names:
        raise KeyError(f"no column {column!r} (columns: {schema.names})")
    metadata = schema.field(column).metadata or {}
    text = metadata.get(METADATA_KEY.encode())
    if text is None:
        raise MissingIdentityError(
            f"column {column!r} carries no {METADATA_KEY!r} metadata: it was not written by kv-embed embed-dataset "
            "(or its metadata was dropped on the way)"
        )
    return _verify(_parse(text, f"column {column!r}"), embeddings, f"column {column!r}")
