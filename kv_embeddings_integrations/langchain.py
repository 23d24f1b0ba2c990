"""LangChain ``Embeddings`` over the shared core."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from .bundled import DEFAULT_MODEL
from .config import EmbedderConfig
from .embedder import KVEmbedder
from .shared import shared_embedder


class KVEmbeddings(EmbedderConfig, Embeddings):
    """KV-Embedding as a LangChain embedding model.

    Documents are embedded with the document prompt, queries with the query prompt. Every
    :class:`~kv_embeddings_integrations.EmbedderConfig` option is a field (``method``, ``layers``,
    ``bias``, ``pooling``, ``max_length``, ...). Instances with the same ``model``, options and
    ``model_kwargs`` share one loaded model in the process.

    Example:
        .. code-block:: python

            from kv_embeddings_integrations import KVEmbeddings

            embeddings = KVEmbeddings(model="Qwen/Qwen3-4B")
            vectors = embeddings.embed_documents(["Paris is the capital of France."])
            query = embeddings.embed_query("capital of France")
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True)

    model: str = Field(default=DEFAULT_MODEL, description="hub id, local directory or bundled alias")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="loading arguments for KVEmbedder.from_pretrained: dtype, device, device_map, "
        "max_memory, trust_remote_code, revision, attn_implementation, ...",
    )
    normalize: bool = Field(default=True, description="L2-normalise the vectors")
    show_progress: bool = Field(default=False, description="show a progress bar on long jobs")
    embedder: KVEmbedder | None = Field(
        default=None, exclude=True, description="an existing KVEmbedder to use instead of loading `model`"
    )
    _embedder: KVEmbedder = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _describe_given_embedder(cls, data: Any) -> Any:
        # With `embedder=`, the fields describe the embedder actually used.
        if isinstance(data, dict) and isinstance(data.get("embedder"), KVEmbedder):
            given = data["embedder"]
            data = {**given.config.to_dict(), "model": given.name, **data}
        return data

    @model_validator(mode="after")
    def _attach(self) -> KVEmbeddings:
        if self.embedder is not None:
            self._embedder = self.embedder
        else:
            self._embedder = shared_embedder(self.model, EmbedderConfig(**self.to_dict()), self.model_kwargs)
        return self

    @property
    def client(self) -> KVEmbedder:
        """The core embedder doing the work."""
        return self._embedder

    def _encode(self, texts: list[str], prompt_type: str) -> list[list[float]]:
        if isinstance(texts, str):
            raise TypeError("embed_documents expects a list of strings, got one str; use embed_query for one text")
        vectors = self._embedder.encode(
            texts, prompt_type=prompt_type, normalize=self.normalize, show_progress_bar=self.show_progress or None
        )
        return vectors.tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (document prompt)."""
        return self._encode(texts, "document")

    def embed_query(self, text: str) -> list[float]:
        """Embed a query (query prompt)."""
        if not isinstance(text, str):
            raise TypeError(f"embed_query expects a str, got {type(text).__name__}")
        return self._encode([text], "query")[0]

    # The forward pass runs in a worker thread, so the event loop is never blocked.
    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents without blocking the event loop."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Embed a query without blocking the event loop."""
        return await asyncio.to_thread(self.embed_query, text)
