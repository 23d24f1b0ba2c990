"""One loaded model per process, however many embedders and adapters use it.

Front ends built with equivalent
[`LoadOptions`][kv_embeddings_integrations.core.model.loading.LoadOptions] share one model in memory
(the key is [`sharing_key`][kv_embeddings_integrations.core.model.loading.LoadOptions.sharing_key],
so ``dtype="bfloat16"`` and ``dtype=torch.bfloat16`` are one model), and the same embedder options
share one [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder]. Entries are weak: a
model is freed once nothing uses it.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ..core.config import EmbedderConfig
from ..core.embedder import KVEmbedder
from ..core.model.bundled import DEFAULT_MODEL
from ..core.model.loading import LoadOptions
from ..core.prompts import check_prompt_name

_lock = threading.Lock()
_models: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
_tokenizers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_load_options: weakref.WeakKeyDictionary[Any, LoadOptions] = weakref.WeakKeyDictionary()
_embedders: weakref.WeakValueDictionary[str, KVEmbedder] = weakref.WeakValueDictionary()


def shared_embedder(
    model: str | LoadOptions, config: EmbedderConfig, load_kwargs: dict[str, Any] | None = None
) -> KVEmbedder:
    """The process-wide [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder] for
    ``model`` with ``config``, loading the model once.

    Args:
        model: [`LoadOptions`][kv_embeddings_integrations.core.model.loading.LoadOptions], or a hub id, local directory
            or bundled alias (then loaded with ``load_kwargs``).
        config: the embedder's options.
        load_kwargs: with a model name, [`LoadOptions`][kv_embeddings_integrations.core.model.loading.LoadOptions]
            fields (``dtype``, ``device``, ``device_map``, ``trust_remote_code``...); options that
            load other weights, or load them differently, load a separate model.
    """
    options = LoadOptions.of(model, **(load_kwargs or {}))
    model_key = options.sharing_key()
    embedder_key = json.dumps([model_key, config.to_dict()], sort_keys=True, default=repr)
    with _lock:
        embedder = _embedders.get(embedder_key)
        if embedder is not None:
            return embedder
        loaded = _models.get(model_key)
        if loaded is not None:
            embedder = KVEmbedder(
                loaded, _tokenizers[loaded], config, name=options.model, load_options=_load_options[loaded]
            )
        else:
            embedder = KVEmbedder.from_pretrained(options, config=config)
            _models[model_key] = embedder.model
            _tokenizers[embedder.model] = embedder.tokenizer
            _load_options[embedder.model] = options
        _embedders[embedder_key] = embedder
        return embedder


class AdapterConfig(EmbedderConfig):
    """The fields both framework adapters add to
    [`EmbedderConfig`][kv_embeddings_integrations.core.config.EmbedderConfig]: which model, how to
    load it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True)

    model: str = Field(default=DEFAULT_MODEL, description="hub id, local directory or bundled alias")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="loading arguments (LoadOptions fields): dtype, device, device_map, max_memory, "
        "trust_remote_code, revision, attn_implementation; anything else goes to AutoModel.from_pretrained",
    )
    normalize: bool = Field(default=True, description="L2-normalise the vectors")
    query_prompt_name: str = Field(
        default="query",
        description="the prompt queries are embedded with: query, a name of `prompts`, or another provider's name "
        "(search_query, retrieval.query...)",
    )
    document_prompt_name: str = Field(
        default="document",
        description="the prompt documents are embedded with: document, a name of `prompts`, or another provider's "
        "name (search_document, passage, classification, clustering...)",
    )
    # The embedder an adapter attaches (given, or shared_embedder()): what identity() and client read.
    _embedder: KVEmbedder = PrivateAttr()

    @field_validator("model_kwargs")
    @classmethod
    def _check_model_kwargs(cls, model_kwargs: dict[str, Any]) -> dict[str, Any]:
        LoadOptions(**model_kwargs)  # fail on a bad dtype or device here, before any load
        return model_kwargs

    @property
    def load_options(self) -> LoadOptions:
        """``model`` and ``model_kwargs`` as the
        [`LoadOptions`][kv_embeddings_integrations.core.model.loading.LoadOptions] the core loads
        with."""
        return LoadOptions(model=self.model, **self.model_kwargs)

    @model_validator(mode="after")
    def _check_prompt_names(self) -> AdapterConfig:
        # Now, rather than at the first query.
        check_prompt_name(self.query_prompt_name, self.prompts, "query_prompt_name")
        check_prompt_name(self.document_prompt_name, self.prompts, "document_prompt_name")
        return self

    def _use(self, embedder: KVEmbedder) -> None:
        """Attach ``embedder`` (given with ``embedder=``, its own prompts are the ones checked)."""
        embedder.templates(self.query_prompt_name)
        embedder.templates(self.document_prompt_name)
        self._embedder = embedder

    def shared_embedder(self) -> KVEmbedder:
        """The process-wide embedder for these options: loaded once, shared by every adapter that
        asks for the same model and configuration."""
        return shared_embedder(self.load_options, EmbedderConfig(**self.to_dict()))

    def identity(self) -> dict[str, Any]:
        """What decides these vectors (weights, prompts, layers, pooling, post-processing,
        ``normalize``): keep it with a vector store, check it on reload
        ([`kv_embeddings_integrations.stores`][kv_embeddings_integrations.stores])."""
        return self._embedder.identity(normalize=self.normalize)

    @property
    def client(self) -> KVEmbedder:
        """The core embedder doing the work."""
        return self._embedder
