"""How a model is loaded: one validated, normalised set of options, and the load itself.

[`LoadOptions`][kv_embeddings_integrations.core.model.loading.LoadOptions] is what every front end
builds (``from_pretrained``, the LangChain and LlamaIndex adapters' ``model`` and ``model_kwargs``,
Ray, MTEB, the command line) and passes down. Equivalent spellings normalise to one value
(``dtype=torch.bfloat16`` and ``"bfloat16"``, ``device="cuda"`` and ``"cuda:0"``), and
[`sharing_key`][kv_embeddings_integrations.core.model.loading.LoadOptions.sharing_key] resolves what
is left to this machine (no device given = the best one here), so one process loads the same weights
once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import EmbedderConfig
from .bundled import BUNDLED_MODELS, DEFAULT_MODEL, bundled_model_dir


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, or the best one here when ``None``: CUDA, then MPS, then the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | None) -> torch.dtype | str:
    """``dtype`` as a torch dtype (or ``"auto"``); ``None``: bfloat16 on a CUDA GPU that has it, else float32."""
    if dtype is None:
        # Half precision is slow or unsupported on CPUs; bf16 is the GPU default.
        if device is not None and device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"dtype must be a torch dtype, its name (e.g. 'bfloat16') or 'auto', got {dtype!r}")
    return resolved


def dtype_name(dtype: torch.dtype | str) -> str:
    """``"bfloat16"`` for ``torch.bfloat16`` (or its string): the name options and records use."""
    return str(dtype).removeprefix("torch.")


def _with_string_keys(value: Any) -> Any:
    # accelerate mixes key types ({0: "20GiB", "cpu": "60GiB"}), which json cannot sort.
    if isinstance(value, dict):
        return {str(k): _with_string_keys(v) for k, v in value.items()}
    return value


def _device_name(device: torch.device) -> str:
    # An accelerator without an index means the current one: name it, so "cuda" and "cuda:0" agree.
    if device.type in ("cpu", "meta"):
        return device.type
    if device.index is None:
        # Only asked of a backend already started: validating options must not start CUDA.
        backend = getattr(torch, device.type, None)
        started = getattr(backend, "is_initialized", lambda: False)()
        index = backend.current_device() if started else 0
        return f"{device.type}:{index}"
    return str(device)


class LoadOptions(BaseModel):
    """Which model to load and how; the one object every front end passes to the core.

    Unknown keyword arguments are collected into ``extra`` (they go to ``AutoModel.from_pretrained``
    as they are), so ``LoadOptions(model=m, **model_kwargs)`` works.

    Attributes:
        model: a model-hub id (``"Qwen/Qwen3-4B"``), a local directory (a ``str`` or path, kept as
            written; the sharing key uses its absolute path) or a bundled alias (``"smollm2-135m"``,
            converted once into the user cache).
        revision: the hub revision (branch, tag or commit) to load.
        dtype: the weights' dtype, stored by name (``"bfloat16"``, ``"float32"``, ``"auto"``);
            accepts a ``torch.dtype``. ``None``: bfloat16 on a CUDA GPU that supports it, else float32.
        device: where to put the whole model (``"cpu"``, ``"cuda:1"``...); ``"cuda"`` is stored as
            the current CUDA device. ``None`` picks CUDA, then MPS, then the CPU, where it loads.
            Ignored when ``device_map`` is given.
        device_map: accelerate placement across devices (``"auto"``, ``"balanced"``... or a dict of
            module name to device), for models larger than one GPU.
        max_memory: per-device memory caps for ``device_map`` (implies ``device_map="auto"``).
        trust_remote_code: allow the repository's own Python code to run. Off unless asked.
        attn_implementation: ``"sdpa"`` or ``"eager"`` (re-routing runs through either); ``None``
            keeps transformers' choice for the model.
        extra: any other ``AutoModel.from_pretrained`` keyword arguments.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True)

    model: str = Field(default=DEFAULT_MODEL, description="hub id, local directory or bundled alias")
    revision: str | None = Field(default=None, description="hub revision (branch, tag or commit)")
    dtype: str | None = Field(
        default=None, description="weights' dtype by name, or 'auto' (None: bfloat16 on a CUDA GPU, else float32)"
    )
    device: str | None = Field(default=None, description="device for the whole model (None: CUDA, else MPS, else CPU)")
    device_map: str | int | dict[str, Any] | None = Field(default=None, description="accelerate placement")
    max_memory: dict[Any, Any] | None = Field(default=None, description="per-device memory caps for device_map")
    trust_remote_code: bool = Field(default=False, description="run the repository's own code")
    attn_implementation: str | None = Field(default=None, description="'sdpa' or 'eager' (None: transformers')")
    extra: dict[str, Any] = Field(default_factory=dict, description="other AutoModel.from_pretrained arguments")

    @model_validator(mode="before")
    @classmethod
    def _collect_extra(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(cls.model_fields)
            unknown = {k: v for k, v in data.items() if k not in known}
            if unknown:
                data = {k: v for k, v in data.items() if k in known}
                data["extra"] = {**dict(data.get("extra") or {}), **unknown}
            if data.get("max_memory") is not None and data.get("device_map") is None:
                data["device_map"] = "auto"
        return data

    @field_validator("model", mode="before")
    @classmethod
    def _check_model(cls, model: Any) -> str:
        if isinstance(model, os.PathLike):
            model = os.fspath(model)
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be a hub id, a local directory or a bundled alias, got {model!r}")
        return model

    @field_validator("device_map", mode="before")
    @classmethod
    def _check_device_map(cls, device_map: Any) -> Any:
        # transformers also takes one device (an index, a name or a torch.device) for the whole model.
        return str(device_map) if isinstance(device_map, torch.device) else device_map

    @field_validator("dtype", mode="before")
    @classmethod
    def _check_dtype(cls, dtype: Any) -> str | None:
        return None if dtype is None else dtype_name(resolve_dtype(dtype, None))

    @field_validator("device", mode="before")
    @classmethod
    def _check_device(cls, device: Any) -> str | None:
        if device is None:
            return None
        try:
            return _device_name(torch.device(device))
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device {device!r} is not a torch device: {error}") from None

    @field_validator("extra")
    @classmethod
    def _check_extra(cls, extra: dict[str, Any]) -> dict[str, Any]:
        # These are the embedder's own: loading options and embedding options must not mix.
        clash = sorted(set(extra) & EmbedderConfig.option_names())
        if clash:
            raise ValueError(f"{clash} are embedder options (EmbedderConfig), not loading options")
        return extra

    @classmethod
    def of(cls, model: str | os.PathLike[str] | LoadOptions, **kwargs: Any) -> LoadOptions:
        """``model`` if it is already
        [`LoadOptions`][kv_embeddings_integrations.core.model.loading.LoadOptions] (then every
        loading argument in ``kwargs`` must be left at its default), else
        ``LoadOptions(model=model, **kwargs)``."""
        if not isinstance(model, LoadOptions):
            return cls.model_validate({"model": model, **kwargs})
        given = sorted(
            k
            for k, v in kwargs.items()
            if k not in cls.model_fields or v != cls.model_fields[k].get_default(call_default_factory=True)
        )
        if given:
            raise TypeError(f"with LoadOptions, give {given} inside them, not as separate arguments")
        return model

    @property
    def path(self) -> str:
        """Where transformers loads from: the converted directory of a bundled alias, else ``model``."""
        return str(bundled_model_dir(self.model)) if self.model in BUNDLED_MODELS else self.model

    def target_device(self) -> torch.device | None:
        """The device the whole model goes to here (``None`` under a ``device_map``)."""
        return None if self.device_map is not None else resolve_device(self.device)

    def torch_dtype(self) -> torch.dtype | str:
        """The dtype the weights load in here."""
        return resolve_dtype(self.dtype, self.target_device())

    def sharing_key(self) -> str:
        """Equal for options that load the same weights the same way in this process."""
        resolved = self.model_dump()
        if self.model not in BUNDLED_MODELS and Path(self.model).expanduser().is_dir():
            resolved["model"] = str(Path(self.model).expanduser().resolve())  # ./m and /abs/m are one model
        target = self.target_device()
        resolved["device"] = _device_name(target) if target is not None else None
        resolved["dtype"] = dtype_name(resolve_dtype(self.dtype, target))
        return json.dumps(_with_string_keys(resolved), sort_keys=True, default=repr)

    def __hash__(self) -> int:
        # Frozen but holding dicts: hash what makes two options equal (equal fields, equal key).
        return hash(self.sharing_key())

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """These options as ``KVEmbedder.from_pretrained`` (or ``LoadOptions``) keyword arguments,
        defaults left out; the ``AutoModel.from_pretrained`` arguments stay under ``extra``."""
        return self.model_dump(exclude={"model"}, exclude_defaults=True)

    def load(self) -> tuple[Any, Any]:
        """Load ``(model, tokenizer)``: the base model (``AutoModel``) and its tokenizer."""
        from transformers import AutoModel, AutoTokenizer

        kwargs: dict[str, Any] = dict(self.extra)
        kwargs["dtype"] = self.torch_dtype()
        if self.device_map is not None:
            kwargs.update(device_map=self.device_map, max_memory=self.max_memory)
        if self.attn_implementation is not None:
            kwargs["attn_implementation"] = self.attn_implementation
        path = self.path
        # revision and trust_remote_code as named keywords, so mypy checks them against the typed
        # parameters of transformers' own signature (a shared dict of mixed values cannot be).
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=self.revision, trust_remote_code=self.trust_remote_code
        )
        model = AutoModel.from_pretrained(
            path, revision=self.revision, trust_remote_code=self.trust_remote_code, **kwargs
        )
        target = self.target_device()
        if target is not None:
            model.to(target)
        return model, tokenizer


def split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` as ([`LoadOptions`][kv_embeddings_integrations.core.model.loading.LoadOptions]
    fields, [`EmbedderConfig`][kv_embeddings_integrations.core.config.EmbedderConfig] fields): what
    ``KVEmbedder.from_pretrained`` takes by keyword.

    Args:
        options: keyword arguments naming fields of either.

    Returns:
        the loading options and the embedder options; any other name is a ``TypeError`` that
        names it and lists the valid ones (a misspelt option fails before a long load, rather
        than reaching ``AutoModel.from_pretrained``, whose own arguments go in ``extra``).
    """
    loading = frozenset(LoadOptions.model_fields) - {"model"}
    embedding = EmbedderConfig.option_names()
    unknown = sorted(set(options) - loading - embedding)
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown}. Loading options (LoadOptions): {sorted(loading)}; embedder "
            f"options (EmbedderConfig): {sorted(embedding)}. Other AutoModel.from_pretrained arguments go in "
            "extra={...}."
        )
    return (
        {k: v for k, v in options.items() if k in loading},
        {k: v for k, v in options.items() if k in embedding},
    )


def load_for_embedding(
    model: str | os.PathLike[str] | LoadOptions, config: Any, options: Mapping[str, Any]
) -> tuple[Any, Any, EmbedderConfig, str, LoadOptions]:
    """What ``KVEmbedder.from_pretrained`` builds an embedder of: ``options`` split into loading
    and embedder options (bad ones fail before a long load), then the model loaded.

    Args:
        model: a hub id, a local directory, a bundled alias or a ``LoadOptions``.
        config: an ``EmbedderConfig`` the embedder options override, a transformers config (handed
            to ``AutoModel.from_pretrained``) or ``None``.
        options: loading and embedder options by name.

    Returns:
        ``(model, tokenizer, config, name, load_options)``, the name as the caller wrote it (a
        relative directory stays relative in messages).
    """
    loading, embedding = split_options(options)
    if config is not None and not isinstance(config, EmbedderConfig):
        # Not ours: a transformers config, which LoadOptions hands to AutoModel.from_pretrained.
        loading["config"], config = config, None
    config = config.with_options(**embedding) if config is not None else EmbedderConfig(**embedding)
    load = LoadOptions.of(model, **loading)
    hf_model, tokenizer = load.load()
    name = load.model if isinstance(model, LoadOptions) else os.fspath(model)
    return hf_model, tokenizer, config, name, load
