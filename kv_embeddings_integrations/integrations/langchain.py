"""LangChain ``Embeddings`` over the shared core."""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import Field, model_validator

from ..core.embedder import KVEmbedder
from .adapter import AdapterConfig


class KVEmbeddings(AdapterConfig, Embeddings):
    """KV-Embedding as a LangChain embedding model.

    Documents are embedded with the document prompt, queries with the query prompt (or the prompts
    ``document_prompt_name`` / ``query_prompt_name`` name, as sentence-transformers' ``prompt_name``
    does: ``prompts={"clustering": "..."}, document_prompt_name="clustering"``). Every
    [`EmbedderConfig`][kv_embeddings_integrations.core.config.EmbedderConfig] option is a field
    (``method``, ``layers``, ``bias``, ``pooling``, ``max_length``, ...). Instances with the same
    ``model``, options and ``model_kwargs`` share one loaded model in the process.

    Example:
        .. code-block:: python

            from kv_embeddings_integrations import KVEmbeddings

            embeddings = KVEmbeddings(model="Qwen/Qwen3-4B") vectors =
            embeddings.embed_documents(["Paris is the capital of France."]) query =
            embeddings.embed_query("capital of France")
    """

    show_progress: bool = Field(default=False, description="show a progress bar on long jobs")
    embedder: KVEmbedder | None = Field(
        default=None, exclude=True, description="an existing KVEmbedder to use instead of loading `model`"
    )

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
        self._use(self.embedder if self.embedder is not None else self.shared_embedder())
        return self

    def _encode(self, texts: list[str], prompt_type: str) -> list[list[float]]:
        if isinstance(texts, str):
            raise TypeError("embed_documents expects a list of strings, got one str; use embed_query for one text")
        vectors = self._embedder.encode(
            texts, prompt_type=prompt_type, normalize=self.normalize, show_progress_bar=self.show_progress or None
        )
        return vectors.tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (``document_prompt_name``'s prompt)."""
        return self._encode(texts, self.document_prompt_name)

    def embed_query(self, text: str) -> list[float]:
        """Embed a query (``query_prompt_name``'s prompt)."""
        if not isinstance(text, str):
            raise TypeError(f"embed_query expects a str, got {type(text).__name__}")
        return self._encode([text], self.query_prompt_name)[0]

    # Concurrent async calls are coalesced by the core into shared forward passes, which run in
    # its worker thread, so the event loop is never blocked.
    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents without blocking the event loop (batched with concurrent calls)."""
        if isinstance(texts, str):
            raise TypeError("aembed_documents expects a list of strings, got one str; use aembed_query for one text")
        vectors = await self._embedder.aencode(texts, prompt_type=self.document_prompt_name, normalize=self.normalize)
        return vectors.tolist()

    async def aembed_query(self, text: str) -> list[float]:
        """Embed a query without blocking the event loop (batched with concurrent calls)."""
        if not isinstance(text, str):
            raise TypeError(f"aembed_query expects a str, got {type(text).__name__}")
        vectors = await self._embedder.aencode([text], prompt_type=self.query_prompt_name, normalize=self.normalize)
        return vectors[0].tolist()
