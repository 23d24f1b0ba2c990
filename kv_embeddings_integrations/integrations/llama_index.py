"""LlamaIndex ``BaseEmbedding`` over the shared core."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from pydantic import BaseModel, Field, PrivateAttr

from ..core.embedder import KVEmbedder
from ..core.model.bundled import DEFAULT_MODEL
from .adapter import AdapterConfig

DEFAULT_EMBED_BATCH_SIZE = 32


def _reject_bare_string(texts: Any) -> None:
    if isinstance(texts, str):
        raise TypeError("expected a list of strings, got one str; use get_text_embedding for one text")


# [misc]: to_dict and from_dict are EmbedderConfig's (the options only, no class_name), by design,
# not BaseComponent's (whose take **kwargs).
class KVEmbedding(AdapterConfig, BaseEmbedding):  # type: ignore[misc]
    """KV-Embedding as a LlamaIndex embedding model.

    Queries use the core's query prompt, texts (nodes) its document prompt (or the prompts
    ``query_prompt_name`` / ``document_prompt_name`` name: a name of ``prompts`` or a provider's).
    Every [`EmbedderConfig`][kv_embeddings_integrations.core.config.EmbedderConfig] option is a
    field. The model lives in a private attribute; pickling keeps the fields (and an ``embedder``
    passed in explicitly) and the model is re-attached on unpickling (loaded again in another
    process, shared in this one), so ``IngestionPipeline(num_workers=...)`` works.

    Example:
        .. code-block:: python

            from llama_index.core import Settings from kv_embeddings_integrations import KVEmbedding

            Settings.embed_model = KVEmbedding(model="Qwen/Qwen3-4B")
    """

    show_progress_bar: bool = Field(default=False, description="show the core's progress bar on long batches")
    _given: KVEmbedder | None = PrivateAttr(default=None)

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        embedder: KVEmbedder | None = None,
        embed_batch_size: int = DEFAULT_EMBED_BATCH_SIZE,
        **kwargs: Any,
    ) -> None:
        """Args:
        model: hub id, local directory or bundled alias (ignored when ``embedder`` is given).
        embedder: an existing [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder] to
        use instead of loading ``model``.
        embed_batch_size: texts per call into the core (which batches again by length).
        **kwargs: [`EmbedderConfig`][kv_embeddings_integrations.core.config.EmbedderConfig] options,
        ``model_kwargs``, ``normalize``,
            ``show_progress_bar`` and ``BaseEmbedding`` fields (``callback_manager``, ...).
        """
        if embedder is not None:
            # The fields describe the embedder actually used.
            model, kwargs = embedder.name, {**embedder.config.to_dict(), **kwargs}
        kwargs.setdefault("model_name", model)
        # pydantic's typed __init__ is AdapterConfig's fields; at run time it takes all of this class's.
        super().__init__(model=model, embed_batch_size=embed_batch_size, **kwargs)  # type: ignore[call-arg]
        self._given = embedder
        self._attach()

    def _attach(self) -> None:
        self._use(self._given if self._given is not None else self.shared_embedder())

    @classmethod
    def class_name(cls) -> str:
        return "KVEmbedding"

    def __getstate__(self) -> dict[str, Any]:
        private = self.__pydantic_private__ or {}  # (a dict: this model has private attributes)
        # The loaded model is re-attached on unpickling rather than copied (or test-pickled).
        embedder = private.pop("_embedder", None)
        try:
            state = super().__getstate__()
        finally:
            if embedder is not None:
                private["_embedder"] = embedder
        state["__pydantic_private__"] = {
            k: v for k, v in (state.get("__pydantic_private__") or {}).items() if k != "_embedder"
        }
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Not BaseComponent's __setstate__, which re-runs __init__ and would lose `_given`.
        BaseModel.__setstate__(self, state)
        self._attach()

    # LlamaIndex's batch methods would iterate a bare string character by character.
    def get_text_embedding_batch(self, texts: list[str], show_progress: bool = False, **kwargs: Any) -> list[Embedding]:
        """Embed documents in batches of ``embed_batch_size`` (a list of strings, not one string)."""
        _reject_bare_string(texts)
        return super().get_text_embedding_batch(texts, show_progress=show_progress, **kwargs)

    async def aget_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[Embedding]:
        """[`get_text_embedding_batch`][kv_embeddings_integrations.integrations.llama_index.KVEmbedding.get_text_embedding_batch]
        without blocking the event loop."""
        _reject_bare_string(texts)
        return await super().aget_text_embedding_batch(texts, show_progress=show_progress, **kwargs)

    def _embed(self, texts: list[str], prompt_type: str) -> list[Embedding]:
        vectors = self._embedder.encode(
            texts, prompt_type=prompt_type, normalize=self.normalize, show_progress_bar=self.show_progress_bar or None
        )
        return vectors.tolist()

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([query], self.query_prompt_name)[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed([text], self.document_prompt_name)[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embed(texts, self.document_prompt_name)

    # Concurrent async calls are coalesced by the core into shared forward passes, which run in
    # its worker thread, so the event loop is never blocked.
    async def _aembed(self, texts: list[str], prompt_type: str) -> list[Embedding]:
        vectors = await self._embedder.aencode(texts, prompt_type=prompt_type, normalize=self.normalize)
        return vectors.tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self._aembed([query], self.query_prompt_name))[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._aembed([text], self.document_prompt_name))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await self._aembed(texts, self.document_prompt_name)
