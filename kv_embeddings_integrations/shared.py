"""One loaded model per process, however many embedders and adapters use it.

Adapters built with the same model name and load options share one model in memory (and the
same options share one :class:`KVEmbedder`). Entries are weak: a model is freed once nothing
uses it.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

from pydantic import ConfigDict, Field

from .bundled import DEFAULT_MODEL
from .config import EmbedderConfig
from .embedder import KVEmbedder

_lock = threading.Lock()
_models: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
_tokenizers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_embedders: weakref.WeakValueDictionary[str, KVEmbedder] = weakref.WeakValueDictionary()


def _key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=repr)


def shared_embedder(model: str, config: EmbedderConfig, load_kwargs: dict[str, Any] | None = None) -> KVEmbedder:
    """The process-wide :class:`KVEmbedder` for ``model`` with ``config``, loading the model once.

    Args:
        model: hub id, local directory or bundled alias, as for :meth:`KVEmbedder.from_pretrained`.
        config: the embedder's options.
        load_kwargs: :meth:`KVEmbedder.from_pretrained` loading arguments (``dtype``, ``device``,
            ``device_map``, ``trust_remote_code``...); different ones load a separate model.
    """
    load_kwargs = dict(load_kwargs or {})
    model_key = _key(model, load_kwargs)
    embedder_key = _key(model_key, config.to_dict())
    with _lock:
        embedder = _embedders.get(embedder_key)
        if embedder is not None:
            return embedder
        loaded = _models.get(model_key)
        if loaded is not None:
            embedder = KVEmbedder(loaded, _tokenizers[loaded], config, name=model)
        else:
            embedder = KVEmbedder.from_pretrained(model, **load_kwargs, **config.to_dict())
            _models[model_key] = embedder.model
            _tokenizers[embedder.model] = embedder.tokenizer
        _embedders[embedder_key] = embedder
        return embedder


class AdapterConfig(EmbedderConfig):
    """The fields both framework adapters add to :class:`EmbedderConfig`: which model, how to load it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True)

    model: str = Field(default=DEFAULT_MODEL, description="hub id, local directory or bundled alias")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="loading arguments for KVEmbedder.from_pretrained: dtype, device, device_map, "
        "max_memory, trust_remote_code, revision, attn_implementation, ...",
    )
    normalize: bool = Field(default=True, description="L2-normalise the vectors")

    def _shared_embedder(self) -> KVEmbedder:
        return shared_embedder(self.model, EmbedderConfig(**self.to_dict()), self.model_kwargs)
