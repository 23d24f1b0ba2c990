"""Haystack components:
[`KVTextEmbedder`][kv_embeddings_integrations.integrations.haystack.KVTextEmbedder] (queries) and
[`KVDocumentEmbedder`][kv_embeddings_integrations.integrations.haystack.KVDocumentEmbedder]
(documents).

Drop-in for Haystack's embedders (``SentenceTransformersTextEmbedder`` / ``...DocumentEmbedder``):
``warm_up()`` loads the model (shared with every other front end in the process), ``run()`` returns
``{"embedding": [...]}`` or ``{"documents": [...]}`` with ``Document.embedding`` set,
``run_async()`` goes through the embedder's request coalescing, and ``to_dict`` / ``from_dict`` keep
pipelines serialisable (YAML included). Needs the ``haystack`` extra (``haystack-ai``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict

from ..core.embedder import KVEmbedder
from ..core.model.bundled import DEFAULT_MODEL
from .adapter import AdapterConfig


class _KVComponent:
    """What both components share: the options (validated at construction), the lazily loaded
    embedder, and their serialisation."""

    def __init__(
        self,
        model: str,
        model_kwargs: dict[str, Any] | None,
        normalize: bool,
        prefix: str,
        suffix: str,
        batch_size: int | None,
        progress_bar: bool,
        options: dict[str, Any],
        prompt_names: dict[str, Any],
    ) -> None:
        # Every EmbedderConfig option (task, method, layers, postprocess, max_length, ...) and the
        # prompt name are checked now, before a pipeline is built around a typo.
        self._config = AdapterConfig(
            model=model,
            model_kwargs=model_kwargs or {},
            normalize=normalize,
            **prompt_names,
            **options,
        )
        self.model, self.model_kwargs, self.normalize = model, dict(model_kwargs or {}), normalize
        self.prefix, self.suffix, self.batch_size, self.progress_bar = prefix, suffix, batch_size, progress_bar
        self.options = dict(options)
        self._embedder: KVEmbedder | None = None

    def warm_up(self) -> None:
        """Load the model (once per process for equal options) and choose its layers."""
        if self._embedder is None:
            self._embedder = self._config.shared_embedder()

    @property
    def embedder(self) -> KVEmbedder:
        self.warm_up()
        assert self._embedder is not None
        return self._embedder

    def identity(self) -> dict[str, Any]:
        """What decides the vectors (see [`identity`][kv_embeddings_integrations.core.identity])."""
        return self.embedder.identity(normalize=self.normalize)

    def _init_parameters(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_kwargs": self.model_kwargs,
            "normalize": self.normalize,
            "prefix": self.prefix,
            "suffix": self.suffix,
            "batch_size": self.batch_size,
            "progress_bar": self.progress_bar,
            **self.options,
        }

    def _encode(self, texts: list[str], prompt_type: str) -> list[list[float]]:
        vectors = self.embedder.encode(
            [self.prefix + t + self.suffix for t in texts],
            prompt_type=prompt_type,
            batch_size=self.batch_size,
            show_progress_bar=self.progress_bar,
            normalize=self.normalize,
        )
        return vectors.tolist()

    async def _aencode(self, texts: list[str], prompt_type: str) -> list[list[float]]:
        result = await self.embedder.aembed(
            [self.prefix + t + self.suffix for t in texts], prompt_type=prompt_type, normalize=self.normalize
        )
        return result.vectors.tolist()


@component
class KVTextEmbedder(_KVComponent):
    """Embeds a string (a query) with KV-Embedding, for an embedding retriever.

    Args:
        model: hub id, local directory or bundled alias (default: the bundled SmolLM2-135M).
        model_kwargs: how to load it ([`LoadOptions`][kv_embeddings_integrations.core.model.loading.LoadOptions]
            fields: ``dtype``, ``device``, ``device_map``, ``revision``, ``trust_remote_code``, ...).
        prompt_name: which prompt embeds the text: ``"query"`` (default), ``"document"``, a name of
            the ``prompts`` option, or another provider's name for the two (``search_query``,
            ``passage``, ...; see ``INPUT_TYPES``).
        normalize: L2-normalise the vector (default True).
        prefix: a string put before the text (the prompt already frames it; rarely needed).
        suffix: a string put after the text.
        batch_size: texts per forward pass (None: the embedder's).
        progress_bar: show a progress bar.
        **options: any [`EmbedderConfig`][kv_embeddings_integrations.core.config.EmbedderConfig] option (``task``,
            ``method``, ``layers``, ``postprocess``, ``max_length``, ...).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        model_kwargs: dict[str, Any] | None = None,
        prompt_name: str = "query",
        normalize: bool = True,
        prefix: str = "",
        suffix: str = "",
        batch_size: int | None = None,
        progress_bar: bool = False,
        **options: Any,
    ) -> None:
        self.prompt_name = prompt_name
        # Not super(): @component rebuilds the class, which breaks super()'s implicit __class__.
        _KVComponent.__init__(
            self, model, model_kwargs, normalize, prefix, suffix, batch_size, progress_bar, options,
            {"query_prompt_name": prompt_name},
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, prompt_name=self.prompt_name, **self._init_parameters())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KVTextEmbedder:
        return default_from_dict(cls, data)

    def _check(self, text: Any) -> None:
        if not isinstance(text, str):
            raise TypeError(
                f"KVTextEmbedder expects a string, got {type(text).__name__}; embed Documents with KVDocumentEmbedder"
            )

    @component.output_types(embedding=list[float])
    def run(self, text: str) -> dict[str, Any]:
        """Embed ``text``: ``{"embedding": [float, ...]}``."""
        self._check(text)
        return {"embedding": self._encode([text], self.prompt_name)[0]}

    @component.output_types(embedding=list[float])
    async def run_async(self, text: str) -> dict[str, Any]:
        """[`run`][kv_embeddings_integrations.integrations.haystack.KVTextEmbedder.run] for
        Haystack's ``AsyncPipeline``: concurrent calls share forward passes."""
        self._check(text)
        return {"embedding": (await self._aencode([text], self.prompt_name))[0]}


@component
class KVDocumentEmbedder(_KVComponent):
    """Embeds Documents with KV-Embedding (the document prompt), for a document store.

    Args:
        model: hub id, local directory or bundled alias (default: the bundled SmolLM2-135M).
        model_kwargs: how to load it ([`LoadOptions`][kv_embeddings_integrations.core.model.loading.LoadOptions]
            fields).
        normalize: L2-normalise the vectors (default True).
        prefix: a string put before each text.
        suffix: a string put after each text.
        batch_size: texts per forward pass (None: the embedder's).
        progress_bar: show a progress bar.
        meta_fields_to_embed: meta fields embedded with the content, before it (as Haystack's own
            embedders do).
        embedding_separator: what joins the meta fields and the content (default a newline).
        prompt_name: which prompt embeds the documents: ``"document"`` (default), a name of the
            ``prompts`` option (``"clustering"``...), or another provider's name for a side.
        **options: any [`EmbedderConfig`][kv_embeddings_integrations.core.config.EmbedderConfig] option.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        model_kwargs: dict[str, Any] | None = None,
        normalize: bool = True,
        prefix: str = "",
        suffix: str = "",
        batch_size: int | None = None,
        progress_bar: bool = False,
        meta_fields_to_embed: list[str] | None = None,
        embedding_separator: str = "\n",
        prompt_name: str = "document",
        **options: Any,
    ) -> None:
        self.meta_fields_to_embed = list(meta_fields_to_embed or [])
        self.embedding_separator = embedding_separator
        # Not super(): @component rebuilds the class, which breaks super()'s implicit __class__.
        self.prompt_name = prompt_name
        _KVComponent.__init__(
            self, model, model_kwargs, normalize, prefix, suffix, batch_size, progress_bar, options,
            {"document_prompt_name": prompt_name},
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self,
            meta_fields_to_embed=self.meta_fields_to_embed,
            embedding_separator=self.embedding_separator,
            prompt_name=self.prompt_name,
            **self._init_parameters(),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KVDocumentEmbedder:
        return default_from_dict(cls, data)

    def texts_to_embed(self, documents: list[Document]) -> list[str]:
        """Each document's text as embedded: its meta fields to embed, then its content."""
        if not isinstance(documents, list) or any(not isinstance(d, Document) for d in documents):
            raise TypeError(
                "KVDocumentEmbedder expects a list of Documents; embed a string with KVTextEmbedder"
            )  # fmt: skip
        texts = []
        for doc in documents:
            meta = [str(doc.meta[k]) for k in self.meta_fields_to_embed if doc.meta.get(k) is not None]
            texts.append(self.embedding_separator.join([*meta, doc.content or ""]))
        return texts

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        """Embed ``documents``: ``{"documents": [...]}``, copies with ``embedding`` set, in order."""
        texts = self.texts_to_embed(documents)
        vectors = self._encode(texts, self.prompt_name) if texts else []
        return {"documents": [replace(d, embedding=v) for d, v in zip(documents, vectors, strict=True)]}

    @component.output_types(documents=list[Document])
    async def run_async(self, documents: list[Document]) -> dict[str, Any]:
        """[`run`][kv_embeddings_integrations.integrations.haystack.KVDocumentEmbedder.run] for
        Haystack's ``AsyncPipeline``."""
        texts = self.texts_to_embed(documents)
        vectors = await self._aencode(texts, self.prompt_name) if texts else []
        return {"documents": [replace(d, embedding=v) for d, v in zip(documents, vectors, strict=True)]}
