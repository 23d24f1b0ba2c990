"""An MTEB 2.x encoder over the shared core, so ``mteb.evaluate`` runs on KV-Embedding.

mteb hands an encoder a ``DataLoader`` of batches (dicts with a ``"text"`` list; a retrieval
corpus arrives with each title already joined to its text, and a query with its instruction)
and a ``prompt_type``: the query side of retrieval is embedded with the core's query prompt,
everything else (documents, STS, classification, clustering...) with its document prompt.

Example:
    .. code-block:: python

        import mteb from kv_embeddings_integrations.integrations.mteb import mteb_encoder

        encoder = mteb_encoder("Qwen/Qwen3-4B", method="kv") results = mteb.evaluate(encoder,
        mteb.get_tasks(tasks=["STSBenchmark", "SciFact"]))

mteb is an optional dependency:  ``pip install 'kv-embeddings-integrations[mteb]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

try:
    from mteb.models import ModelMeta
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ScoringFunction
    from mteb.types import PromptType
except ModuleNotFoundError as e:  # only a missing mteb; a broken mteb install raises as it is
    if e.name is None or e.name.split(".")[0] != "mteb":
        raise
    from ..core.extras import missing_error

    raise missing_error("mteb", "kv_embeddings_integrations.integrations.mteb (an MTEB 2.x encoder)", ["mteb"]) from e

if "experiment_kwargs" not in ModelMeta.model_fields:  # ModelMeta forbids unknown fields
    from mteb import __version__ as _mteb_version

    raise ImportError(
        f"kv_embeddings_integrations.integrations.mteb needs mteb>=2.10 (ModelMeta.experiment_kwargs), "
        f"found {_mteb_version}. "
        "Upgrade with:  pip install -U 'kv-embeddings-integrations[mteb]'"
    )

from ..core.config import EmbedderConfig
from ..core.embedder import KVEmbedder
from ..core.model.bundled import DEFAULT_MODEL
from ..core.model.loading import LoadOptions, dtype_name
from ..version import __version__

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.types import BatchedInput, EncodeKwargs
    from torch.utils.data import DataLoader
    from typing_extensions import Unpack

__all__ = ["DEFAULT_REVISION", "NAME_PREFIX", "KVMTEBEncoder", "load_mteb_encoder", "mteb_encoder"]

NAME_PREFIX = "kv-embeddings"
# The revision recorded when none is given: vectors depend on this package's code as much as on
# the weights, so results of different versions are kept apart in mteb's result cache.
DEFAULT_REVISION = f"kv-embeddings-integrations-{__version__}"
# MTEB scores float vectors: the precision this encoder returns (the core's quantized ones are
# measured by `kv-embed eval --precision` instead); mteb's `precision` encode kwarg asks for others.
_NATIVE_PRECISION = "float32"


def _is_local(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def _default_name(source: str, method: str) -> str:
    """``kv-embeddings/<model>-<method>``: a local directory by its folder name, a hub id with ``__`` for ``/``."""
    label = Path(source).expanduser().resolve().name if _is_local(source) else source.replace("/", "__")
    return f"{NAME_PREFIX}/{label}-{method}"


def _dtype_name(model: torch.nn.Module) -> str | None:
    param = next(model.parameters(), None)
    return dtype_name(param.dtype) if param is not None else None


def _embedding_parameters(embedder: KVEmbedder) -> int:
    # (torch types a module's attributes as Tensor | Module: the embeddings' weight is a tensor.)
    embeddings: torch.nn.Module = embedder.decoder.get_input_embeddings()
    return cast(torch.Tensor, embeddings.weight).numel()


def _experiment_kwargs(embedder: KVEmbedder) -> dict[str, Any]:
    """The options, resolved, that decide the vectors beyond the model and method.

    mteb keeps results of different ``experiment_kwargs`` in different cache folders, and passes
    them back to the loader, so every key is an
    [`EmbedderConfig`][kv_embeddings_integrations.core.config.EmbedderConfig] option.
    ``layers="auto"`` is recorded as the layers it chose; no re-routing as no ``layers`` (the
    loader gets ``layers=None`` from ``loader_kwargs``: mteb drops ``None`` experiment values).
    """
    kwargs: dict[str, Any] = {
        "pooling": embedder.pooling,
        "mean_scope": embedder.mean_scope,
        "max_length": embedder.max_length,
    }
    if embedder.layers:
        kwargs["layers"] = list(embedder.layers)
        kwargs["bias"] = embedder.config.bias
    if embedder.config.prompts:
        kwargs["prompts"] = dict(embedder.config.prompts)
    # Options added with prompt families and post-processing: recorded only when set, so the
    # folders of results made before them keep their names.
    for name in ("prompt_family", "reroute", "token_prepending", "output_layer", "dimensions"):
        if getattr(embedder.config, name) is not None:
            kwargs[name] = getattr(embedder.config, name)
    if embedder.config.postprocess != "none":
        kwargs["postprocess"] = embedder.config.postprocess
    if embedder.lexical is not None:
        kwargs["lexical"] = embedder.lexical.kind
        kwargs["lexical_dim"] = embedder.lexical.dim
        kwargs["lexical_weight"] = embedder.lexical.weight
    return kwargs


class KVMTEBEncoder(AbsEncoder):
    """KV-Embedding as an mteb encoder (mteb's ``EncoderProtocol``, through its ``AbsEncoder``).

    Pass an existing [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder], or a model
    name and options to load one. Similarities are cosine (mteb's own ``cos_sim``), as declared in
    ``mteb_model_meta``.

    Args:
        model: a [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder] to use as it is, or what
            [`from_pretrained`][kv_embeddings_integrations.core.embedder.KVEmbedder.from_pretrained]
            loads: a model-hub id, a local directory or a bundled alias (default
            ``"smollm2-135m"``).
        revision: the revision mteb records the results under; when ``model`` is a name, also the
            hub revision (branch, tag or commit) loaded, here and by the meta's loader. ``None``
            records ``DEFAULT_REVISION`` (this package's version) and loads the default branch.
        device: where to load the model (``"cpu"``, ``"cuda"``...); ``None`` picks CUDA, then MPS,
            then CPU. Only when ``model`` is a name.
        dtype: weights' dtype (``"bfloat16"``, ``torch.float32``, ``"auto"``...); ``None``: bfloat16
            on a CUDA GPU that supports it, float32 otherwise. Only when ``model`` is a name.
        name: the model name mteb records, in its ``"organization/model_name"`` form; ``None``
            gives ``"kv-embeddings/<model>-<method>"``.
        normalize: L2-normalise the vectors (the cosine scores mteb computes are the same either way).
        **options: [`EmbedderConfig`][kv_embeddings_integrations.core.config.EmbedderConfig] options (``method``,
            ``layers``, ``bias``, ``pooling``, ``max_length``, ``batch_size``...) and other
            [`from_pretrained`][kv_embeddings_integrations.core.embedder.KVEmbedder.from_pretrained]
            arguments (``device_map``, ``trust_remote_code``, ``attn_implementation``...). Only when
            ``model`` is a name.

    Attributes:
        embedder: the core [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder] doing the work.
        mteb_model_meta: the ``mteb.ModelMeta`` describing the model, its method and options.
    """

    mteb_model_meta: ModelMeta

    def __init__(
        self,
        model: str | KVEmbedder = DEFAULT_MODEL,
        revision: str | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        name: str | None = None,
        normalize: bool = True,
        **options: Any,
    ) -> None:
        load_kwargs: dict[str, Any] = {}
        if isinstance(model, KVEmbedder):
            given = {"device": device, "dtype": dtype, **options}
            unused = sorted(key for key, value in given.items() if value is not None)
            if unused:
                raise TypeError(f"{unused} apply only when loading a model by name, not to a given KVEmbedder")
            embedder = model
        elif isinstance(model, str):
            config_options, loading = EmbedderConfig.split_options(options)
            config = EmbedderConfig(**config_options)
            load_options = LoadOptions.of(model, revision=revision, device=device, dtype=dtype, **loading)
            embedder = KVEmbedder.from_pretrained(load_options, config=config)
            # What the loader needs, besides the options kept in `experiment_kwargs`, to load it again.
            load_kwargs = load_options.from_pretrained_kwargs()
            load_kwargs.pop("device", None)  # where to run is the loading machine's choice
            load_kwargs.pop("dtype", None)  # recorded from the loaded weights below
            if load_kwargs.pop("revision", None) is not None:
                load_kwargs["model_revision"] = revision
        else:
            raise TypeError(f"model must be a model name or a KVEmbedder, got {type(model).__name__}")
        self.embedder = embedder
        self.model = embedder  # what mteb's AbsEncoder calls the wrapped model
        self.normalize = normalize
        self.mteb_model_meta = self._build_meta(name=name, revision=revision, load_kwargs=load_kwargs)

    def _build_meta(self, *, name: str | None, revision: str | None, load_kwargs: dict[str, Any]) -> ModelMeta:
        embedder = self.embedder
        source = embedder.name
        hub_id = None if _is_local(source) or "/" not in source else source
        loader_kwargs: dict[str, Any] = {"model": source, "method": embedder.config.resolved_method, **load_kwargs}
        dtype = _dtype_name(embedder.model)
        if dtype is not None:
            loader_kwargs.setdefault("dtype", dtype)
        if not embedder.layers:
            loader_kwargs["layers"] = None  # else the loader would select layers ("auto")
        # Recorded as experiment options only when on (below); the loader needs them either way.
        loader_kwargs["postprocess"] = embedder.config.postprocess
        loader_kwargs["lexical"] = embedder.resolved.lexical
        # Batching does not change the vectors, so it is for the loader only, not an experiment option.
        # So is the fitting sample of a post-processing (the fitted transform is keyed by it).
        for option in ("batch_size", "max_tokens_per_batch", "postprocess_texts", "lexical_texts"):
            if getattr(embedder.config, option) is not None:
                loader_kwargs[option] = getattr(embedder.config, option)
        parameters = list(embedder.model.parameters())
        uses_prompts = any(embedder.template(kind) != "{text}" for kind in ("document", "query"))
        return ModelMeta(
            loader=load_mteb_encoder,
            loader_kwargs=loader_kwargs,
            name=name or _default_name(source, embedder.config.resolved_method),
            revision=revision or DEFAULT_REVISION,
            release_date=None,
            languages=None,  # those of the underlying LLM
            n_parameters=embedder.model.num_parameters(),
            n_embedding_parameters=_embedding_parameters(embedder),
            memory_usage_mb=round(sum(p.numel() * p.element_size() for p in parameters) / 2**20, 2),
            max_tokens=embedder.max_length,
            embed_dim=embedder.dimension,
            license=None,  # that of the underlying LLM
            open_weights=True,
            public_training_code=None,
            public_training_data=None,
            framework=["PyTorch", "Transformers"],
            reference=f"https://huggingface.co/{hub_id}" if hub_id else None,
            similarity_fn_name=ScoringFunction.COSINE,
            # Fixed query/document prompt templates (not mteb's task instructions).
            use_instructions=uses_prompts,
            # Training-free: no embedding training on any dataset (the LLM's pretraining aside).
            training_datasets=set(),
            adapted_from=hub_id,
            modalities=["text"],
            model_type=["dense"],
            experiment_kwargs=_experiment_kwargs(embedder),
        )

    def __repr__(self) -> str:
        return f"KVMTEBEncoder(name={self.mteb_model_meta.name!r}, embedder={self.embedder!r})"

    def encode(
        self,
        inputs: DataLoader[BatchedInput],
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Unpack[EncodeKwargs],
    ) -> np.ndarray:
        """Embed the texts of ``inputs``, in order.

        Args:
            inputs: mteb's batches of inputs; each batch's ``"text"`` list is embedded.
            task_metadata: the task's metadata (unused: the prompts depend only on ``prompt_type``).
            hf_split: the split being evaluated (unused).
            hf_subset: the subset being evaluated (unused).
            prompt_type: ``PromptType.query`` embeds with the query prompt; ``PromptType.document``
                or ``None`` (symmetric tasks) with the document prompt.
            **kwargs: mteb's encode kwargs: ``batch_size`` (used unless the embedder was configured
                with its own ``batch_size`` or ``max_tokens_per_batch``), ``show_progress_bar``, and
                ``precision``, which must be ``"float32"`` if given.

        Returns:
            float32 array of shape ``(number of texts, hidden_size)``.
        """
        precision = kwargs.get("precision")
        if precision is not None and str(precision).lower() != _NATIVE_PRECISION:
            raise ValueError(
                f"KVMTEBEncoder produces {_NATIVE_PRECISION} embeddings, not precision={precision!r}; "
                "wrap it in mteb's CompressionWrapper for quantized embeddings"
            )
        texts: list[str] = []
        for batch in inputs:
            if "text" not in batch:
                raise ValueError(f"KVMTEBEncoder embeds text only; got a batch with {sorted(batch)}")
            texts.extend(batch["text"])
        config = self.embedder.config
        own_batching = config.batch_size is not None or config.max_tokens_per_batch is not None
        return self.embedder.encode(
            texts,
            prompt_type="query" if prompt_type == PromptType.query else "document",
            batch_size=None if own_batching else kwargs.get("batch_size"),
            show_progress_bar=kwargs.get("show_progress_bar"),
            normalize=self.normalize,
        )


def load_mteb_encoder(
    model_name: str,
    revision: str | None = None,
    *,
    model: str,
    model_revision: str | None = None,
    **kwargs: Any,
) -> KVMTEBEncoder:
    """The ``ModelMeta.loader`` of
    [`KVMTEBEncoder`][kv_embeddings_integrations.integrations.mteb.KVMTEBEncoder]:
    ``meta.load_model()`` builds it again.

    Args:
        model_name: the mteb model name (kept as the new encoder's name).
        revision: the revision mteb recorded (the label; the hub revision is ``model_revision``).
        model: the hub id, local directory or bundled alias to load.
        model_revision: the hub revision to load, if one was given.
        **kwargs: the embedder options and loading arguments (``method``, ``layers``, ``dtype``,
            ``device``...), from the meta's ``loader_kwargs`` and ``experiment_kwargs``.
    """
    return KVMTEBEncoder(model, revision=model_revision, name=model_name, **kwargs)


def mteb_encoder(model: str | KVEmbedder = DEFAULT_MODEL, **options: Any) -> KVMTEBEncoder:
    """An mteb encoder for ``model``: ``mteb.evaluate(mteb_encoder("Qwen/Qwen3-4B"), tasks)``.

    Args:
        model: a [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder], or a model-hub id, local
            directory or bundled alias to load.
        **options: [`KVMTEBEncoder`][kv_embeddings_integrations.integrations.mteb.KVMTEBEncoder] arguments
            (``revision``, ``device``, ``dtype``, ``name``, ``normalize``) and, when ``model`` is a
            name, embedder options (``method``, ``layers``, ``bias``...) and loading arguments.
    """
    return KVMTEBEncoder(model, **options)
