"""The core embedder every adapter delegates to."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from . import sparse as sparse_vectors
from .batching import plan_batches
from .cache import texts_digest
from .calibration import builtin_calibration_texts
from .coalescing import RequestCoalescer
from .config import EmbedderConfig
from .identity import embedder_identity, model_identity
from .inputs import check_positive_int, texts_to_embed
from .loading import LoadOptions
from .method import postprocessing, rerouting, token_prepending
from .method.layer_selection import LayerSelection, auto_select_layers, resolve_layers
from .method.postprocessing import PostProcessor
from .pool import EmbeddingPool
from .pooling import pool_hidden_states
from .prompts import FAMILIES, METHODS, PROMPT_TYPES, MethodSpec, PromptFamily
from .recipe import EmbedderRecipe
from .results import EmbedResult
from .sparse import SparseVectors
from .tokenization import EncodedText, PromptTokenizer, TokenBatch, collate

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_LENGTH = 4096
# A progress bar is shown (when not asked either way) for jobs of more batches than this.
PROGRESS_BAR_MIN_BATCHES = 10
# Texts tokenized at once by encode: bounds the token ids held for very large inputs.
ENCODE_CHUNK = 16384
# Most texts embedded in one coalesced call of concurrent requests (bounds one call's latency).
COALESCE_MAX_TEXTS = 512


def _release_memory() -> None:
    # Every GPU, not only the input device: with a device map the failing layer may sit elsewhere.
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _average(passes: list[EmbedResult]) -> EmbedResult:
    """Several templates' results for the same texts: mean vector, tokens summed, any truncation."""
    return EmbedResult(
        np.mean([p.vectors for p in passes], axis=0, dtype=np.float32),
        tuple(int(sum(c)) for c in zip(*(p.token_counts for p in passes), strict=True)),
        tuple(any(t) for t in zip(*(p.truncated for p in passes), strict=True)),
        tuple(max(n) for n in zip(*(p.pieces for p in passes), strict=True)),
        None if passes[0].sparse is None else sparse_vectors.mean_of([p.sparse for p in passes]),
    )


def _chain(source: Future, target: Future, transform) -> None:
    """Complete ``target`` with ``transform`` of ``source``'s result, or its exception."""
    if source.cancelled():
        target.cancel()
    elif not target.set_running_or_notify_cancel():
        return  # the caller gave up (e.g. its asyncio task was cancelled)
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        try:
            value = transform(source.result())
        except BaseException as failure:  # e.g. a warning turned into an error: never leave it pending
            target.set_exception(failure)
        else:
            target.set_result(value)


# State that belongs to this process: not pickled (the pool sends embedders to workers).
_PROCESS_LOCAL = ("_coalescer", "_coalescer_lock", "_float32_lock", "batch_listeners", "batch_start_listeners")


class KVEmbedder:
    """Text embeddings from a frozen decoder-only LLM by KV re-routing (arXiv 2601.01046).

    Wraps an already-loaded model; use :meth:`from_pretrained` to load one by name.

    Args:
        model: a transformers ``PreTrainedModel`` (a ``*ForCausalLM`` or its base ``*Model``).
        tokenizer: its fast tokenizer.
        config: an :class:`EmbedderConfig`; keyword ``options`` override its fields.
        name: how to name the model in messages and caches (defaults to its ``name_or_path``).
        load_options: how the model was loaded, when :meth:`from_pretrained` loaded it (kept as
            :attr:`load_options` for front ends that load it again elsewhere).
        postprocessor: an already fitted post-processing (as :attr:`postprocessor` holds), used
            instead of fitting or reading the cache; must match ``config.postprocess``.
        **options: any :class:`EmbedderConfig` field: ``method``, ``prompt_family``, ``reroute``,
            ``layers``, ``bias``, ``pooling``, ``output_layer``, ``postprocess``, ``max_length``, ...

    With ``layers="auto"``, the layers are selected (or read from the cache) at the end of
    construction, by :func:`~kv_embeddings_integrations.core.method.layer_selection.auto_select_layers` on
    this fully built embedder; :attr:`layer_selection` holds the outcome. Post-processing, if
    any, is fitted (or read from the cache) after that.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer,
        config: EmbedderConfig | None = None,
        *,
        name: str | None = None,
        load_options: LoadOptions | None = None,
        postprocessor: PostProcessor | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(model, PreTrainedModel):
            raise TypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}")
        self.config = config.with_options(**options) if config is not None else EmbedderConfig(**options)
        self.model = model.eval()
        get_decoder = getattr(model, "get_decoder", None)
        self.decoder = (get_decoder() if get_decoder is not None else None) or model
        self.tokenizer = tokenizer
        self.name = name or getattr(model, "name_or_path", None) or type(model).__name__
        self.load_options = load_options
        text_config = model.config.get_text_config()
        self.hidden_size: int = text_config.hidden_size
        self.num_layers: int = text_config.num_hidden_layers
        context = getattr(text_config, "max_position_embeddings", None)
        if self.config.max_length is not None and context is not None and self.config.max_length > context:
            raise ValueError(
                f"max_length={self.config.max_length} exceeds the model's context length of {context} tokens"
            )
        self.max_length = self.config.max_length or min(context or DEFAULT_MAX_LENGTH, DEFAULT_MAX_LENGTH)
        self.output_layer: int = self._resolve_output_layer()
        self.prepend_layers: tuple[int, int] | None = None
        placeholder = None
        if self.token_prepending:
            token_prepending.install(self.decoder)
            self.prepend_layers = token_prepending.scaled_layers(self.num_layers)
            placeholder = token_prepending.placeholder_id(tokenizer)
        self._prompt_tokenizer = PromptTokenizer(tokenizer, self.max_length, placeholder)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad_token_id = pad if pad is not None else 0
        self._coalescer: RequestCoalescer | None = None
        self._coalescer_lock = threading.Lock()
        self._float32_lock = threading.Lock()
        # Called with the number of texts of each coalesced forward pass once it ran (a server's
        # metrics), and just before it runs (a blocking one holds the pass: how tests order events).
        self.batch_listeners: list[Callable[[int], None]] = []
        self.batch_start_listeners: list[Callable[[int], None]] = []
        # Nothing re-routed until the layers are known; selection below runs on the built embedder.
        self.layers: list[int] = []
        self.layer_selection: LayerSelection | None = None
        # None until fitted (below): the fit embeds through this embedder without it.
        self.postprocessor: PostProcessor | None = None
        if self.reroutes:
            self._select_layers()
        if self.config.postprocess != "none":
            if postprocessor is not None and postprocessor.kind != self.config.postprocess:
                raise ValueError(
                    f"postprocessor is {postprocessor.kind!r}, the config asks {self.config.postprocess!r}"
                )
            self.postprocessor = postprocessor or self._fit_postprocessor()

    def _resolve_output_layer(self) -> int:
        layer = self.config.output_layer
        if layer is None:
            if self.token_prepending:
                return token_prepending.scaled_output_layer(self.num_layers)
            layer = self.family.output_layer
        if not -self.num_layers <= layer < self.num_layers:
            raise ValueError(
                f"output_layer={layer} out of range: the model has {self.num_layers} layers "
                f"({-self.num_layers}..{self.num_layers - 1})"
            )
        return layer % self.num_layers

    def _select_layers(self) -> None:
        if self.config.layers == "auto":
            # Layers after the pooled one cannot change its output: never chosen.
            rule = {"last_layer": self.output_layer, **(self.config.selection or {})}
            self.layer_selection = auto_select_layers(self, self.config.calibration_texts, **rule)
            layers = self.layer_selection.layers
        else:
            layers = resolve_layers(self.config.layers, self.num_layers)
            late = [i for i in layers if i > self.output_layer]
            if late:
                raise ValueError(
                    f"layers {late} come after output_layer {self.output_layer}: re-routing them cannot change "
                    "the pooled hidden states"
                )
        if layers:
            rerouting.install(self.model)
        self.layers = layers

    def _postprocess_key(self, texts: list[str]) -> dict[str, Any]:
        # Fitted on the document prompt: which side queries take does not enter.
        config = self.config.vector_options()
        for name in ("batch_size", "max_tokens_per_batch", "calibration_texts", "selection", "postprocess_texts"):
            config.pop(name)
        config.pop("symmetric", None)
        return {
            "version": postprocessing.FIT_VERSION,
            "kind": self.config.postprocess,
            "dimensions": self.config.dimensions,
            **model_identity(self.model),
            "config": config,
            # The prompts as written, not only the method's name: a changed template refits.
            "templates": list(self.templates("document")),
            "layers": self.layers,
            "max_length": self.max_length,
            "num_texts": len(texts),
            "texts_sha256": texts_digest(texts),
        }

    def _fit_postprocessor(self) -> PostProcessor:
        texts = self.config.postprocess_texts
        texts = list(texts) if texts is not None else builtin_calibration_texts()
        if len(set(texts)) < postprocessing.MIN_TEXTS:
            raise ValueError(
                f"post-processing needs at least {postprocessing.MIN_TEXTS} distinct texts to fit, "
                f"got {len(set(texts))}"
            )
        key = self._postprocess_key(texts)
        cached = postprocessing.lookup(key, self.name)
        if cached is not None:
            return cached
        logger.info(
            "%s: fitting the %s post-processing on %d texts (once, then cached)",
            self.name,
            self.config.postprocess,
            len(texts),
        )
        vectors = self.embed(texts, postprocess=False).vectors
        processor = postprocessing.fit(vectors, self.config.postprocess, self.config.dimensions)
        postprocessing.save(postprocessing.cache_path(key), key, processor)
        return processor

    def __getstate__(self) -> dict[str, Any]:
        # The request queue and its thread belong to this process.
        return {k: v for k, v in self.__dict__.items() if k not in _PROCESS_LOCAL}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._coalescer = None
        self._coalescer_lock = threading.Lock()
        self._float32_lock = threading.Lock()
        self.batch_listeners = []
        self.batch_start_listeners = []

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike | LoadOptions,
        *,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        device_map: str | dict | None = None,
        max_memory: dict | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        attn_implementation: str | None = None,
        config: EmbedderConfig | None = None,
        **kwargs: Any,
    ) -> KVEmbedder:
        """Load a model by hub id, local directory or bundled alias, and wrap it.

        Args:
            model: a model-hub id (``"Qwen/Qwen3-4B"``), a local directory, a bundled alias
                (``"smollm2-135m"``, converted once into the user cache), or a
                :class:`~kv_embeddings_integrations.core.loading.LoadOptions` holding all of the
                loading arguments below (then none of them may be given separately).
            dtype: weights' dtype (``torch.bfloat16``, ``"float32"``, ``"auto"``...). ``None``:
                bfloat16 on a CUDA GPU that supports it, float32 otherwise.
            device: where to put the whole model (``"cpu"``, ``"cuda:1"``...); ``None`` picks CUDA,
                then MPS, then CPU. Ignored when ``device_map`` is given.
            device_map: accelerate placement across devices (``"auto"``, ``"balanced"`` or a dict
                of module name to device), for models larger than one GPU.
            max_memory: per-device memory caps for ``device_map`` (implies ``device_map="auto"``).
            trust_remote_code: allow the repository's own Python code to run. Off unless asked.
            revision: the hub revision (branch, tag or commit) to load.
            attn_implementation: ``"sdpa"`` or ``"eager"`` (re-routing runs through either);
                ``None`` keeps transformers' choice for the model.
            config: an :class:`EmbedderConfig`; option keywords in ``kwargs`` override its fields.
                (Any other ``config``, such as a transformers ``PretrainedConfig``, goes to
                ``AutoModel.from_pretrained``.)
            **kwargs: :class:`EmbedderConfig` options (``method``, ``layers``, ``bias``, ``pooling``,
                ``max_length``, ...); anything else goes to ``AutoModel.from_pretrained``.
        """
        options, kwargs = EmbedderConfig.split_options(kwargs)
        if config is not None and not isinstance(config, EmbedderConfig):
            # Not ours: a transformers config, for AutoModel.from_pretrained as before.
            kwargs["config"], config = config, None
        # Bad options fail before a long load.
        config = config.with_options(**options) if config is not None else EmbedderConfig(**options)
        load = LoadOptions.of(
            model,
            dtype=dtype,
            device=device,
            device_map=device_map,
            max_memory=max_memory,
            trust_remote_code=trust_remote_code,
            revision=revision,
            attn_implementation=attn_implementation,
            **kwargs,
        )
        hf_model, tokenizer = load.load()
        # A name as the caller wrote it (a relative directory stays relative in messages).
        name = load.model if isinstance(model, LoadOptions) else os.fspath(model)
        return cls(hf_model, tokenizer, config, name=name, load_options=load)

    @property
    def spec(self) -> MethodSpec:
        return METHODS[self.config.resolved_method]

    @property
    def family(self) -> PromptFamily:
        """The prompt family: the config's ``prompt_family``, else the method's."""
        return FAMILIES[self.config.prompt_family or self.spec.family]

    @property
    def reroutes(self) -> bool:
        """Whether re-routing is on (the config's ``reroute``, else the method's)."""
        return self.spec.reroute if self.config.reroute is None else self.config.reroute

    @property
    def token_prepending(self) -> bool:
        """Whether Token Prepending is on (the config's, else the method's)."""
        on = self.config.token_prepending
        return self.spec.token_prepending if on is None else on

    @property
    def pooling(self) -> str:
        if self.config.pooling:
            return self.config.pooling
        # A method's own pooling holds for its family; another family brings its own.
        own = self.spec.pooling if self.config.prompt_family in (None, self.spec.family) else None
        return own or self.family.pooling

    @property
    def mean_scope(self) -> str:
        return self.config.mean_scope or self.family.mean_scope

    @property
    def dimension(self) -> int:
        """Size of the vectors returned: the model's hidden size, or the post-processing's."""
        return self.postprocessor.dimensions if self.postprocessor is not None else self.hidden_size

    @property
    def batch_size(self) -> int | None:
        """Rows per batch: the config's, else 32, or unbounded under a token budget."""
        if self.config.batch_size is None and self.config.max_tokens_per_batch is None:
            return DEFAULT_BATCH_SIZE
        return self.config.batch_size

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embeddings."""
        return self.decoder.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights."""
        return next(self.model.parameters()).dtype

    def templates(self, prompt_type: str = "document") -> tuple[str, ...]:
        """The prompt templates used for ``prompt_type``: the user's override, else the family's
        (MetaEOL has several: each text is embedded with each, and the vectors averaged)."""
        if prompt_type not in PROMPT_TYPES:
            raise ValueError(f"prompt_type must be one of {PROMPT_TYPES}, got {prompt_type!r}")
        if self.config.symmetric:
            prompt_type = "document"  # a symmetric task's two sides are alike
        override = (self.config.prompts or {}).get(prompt_type)
        return (override,) if override else self.family.templates[prompt_type]

    def template(self, prompt_type: str = "document") -> str:
        """The (first) prompt template used for ``prompt_type``; layer selection measures this one."""
        return self.templates(prompt_type)[0]

    def identity(self, *, normalize: bool = True) -> dict[str, Any]:
        """What decides this embedder's vectors (model weights, prompts, layers, pooling,
        post-processing), as a JSON-able record to keep with stored vectors; see
        :mod:`~kv_embeddings_integrations.core.identity`.

        Args:
            normalize: whether the stored vectors are L2-normalised.
        """
        return embedder_identity(self, normalize=normalize)

    def recipe(self) -> EmbedderRecipe:
        """What another process needs to rebuild this embedder (model, tokenizer, config, layers)."""
        return EmbedderRecipe(
            type(self), self.model, self.tokenizer, self.config, self.name, list(self.layers), self.postprocessor
        )

    def __repr__(self) -> str:
        family = self.config.prompt_family or self.spec.family
        return (
            f"KVEmbedder(model={self.name!r}, task={self.config.task!r}, method={self.config.resolved_method!r}, "
            f"family={family!r}, "
            f"layers={self.layers}, bias={self.config.bias}, pooling={self.pooling!r}, "
            f"output_layer={self.output_layer}, postprocess={self.config.postprocess!r})"
        )

    # -- embedding -------------------------------------------------------------------------------

    def embed(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        normalize: bool = True,
        postprocess: bool = True,
        sparse: bool = False,
    ) -> EmbedResult:
        """Embed texts and report what the model saw of each: the call every front end builds on.

        Args:
            texts: one string (one row), or an iterable of strings.
            prompt_type: ``"document"`` (documents and symmetric tasks) or ``"query"`` (the query
                side of asymmetric retrieval); picks the prompt template.
            batch_size: overrides the config's ``batch_size`` for this call.
            show_progress_bar: ``None`` shows one only for jobs of more than 10 batches.
            normalize: L2-normalise each vector (cosine similarity becomes a dot product).
            postprocess: apply the fitted post-processing (``False``: the vectors before it, of
                ``hidden_size``, normalised as ``normalize`` says).
            sparse: also compute each text's sparse lexical vector in the same forward pass
                (:mod:`~kv_embeddings_integrations.core.sparse`: the next-token logits at the prompt's
                end, ``log(1 + relu(z))``, kept for the text's own token ids), as ``result.sparse``.

        Returns:
            an :class:`~kv_embeddings_integrations.core.results.EmbedResult`: ``(n, dimension)``
            float32 vectors in input order, each text's token count (prompt included) and whether
            it was truncated or split. Nothing is warned: the caller decides how to report truncation.
        """
        items, _ = texts_to_embed(texts, self.config.empty_text)
        return self._embed_items(items, prompt_type, batch_size, show_progress_bar, normalize, postprocess, sparse)

    def encode_sparse(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> SparseVectors:
        """Sparse lexical vectors of texts (PromptReps-style), from the same pass as :meth:`encode`'s.

        Each text's weights cover only its own token ids. Score a query against documents by the dot
        product of their weights (:func:`~kv_embeddings_integrations.core.fusion.sparse_scores`); fuse with
        the dense scores through :mod:`~kv_embeddings_integrations.core.fusion`. A pass that needs both
        should call :meth:`embed` with ``sparse=True`` instead: one forward pass gives both.

        Args:
            texts: one string, or an iterable of strings.
            prompt_type: ``"document"`` or ``"query"``, as for :meth:`encode`.
            batch_size: overrides the config's ``batch_size`` for this call.
            show_progress_bar: ``None`` shows one only for jobs of more than 10 batches.
        """
        result = self.embed(
            texts, prompt_type=prompt_type, batch_size=batch_size, show_progress_bar=show_progress_bar, sparse=True
        )
        self._warn_truncated(result, stacklevel=3)
        return result.sparse

    def encode(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        normalize: bool = True,
        devices: Sequence[str | torch.device] | None = None,
    ) -> np.ndarray:
        """Embed texts into an array (:meth:`embed`'s vectors), warning when texts were truncated.

        Args:
            texts: one string, or an iterable of strings.
            prompt_type: ``"document"`` (documents and symmetric tasks) or ``"query"`` (the query
                side of asymmetric retrieval); picks the prompt template.
            batch_size: overrides the config's ``batch_size`` for this call.
            show_progress_bar: ``None`` shows one only for jobs of more than 10 batches.
            normalize: L2-normalise each vector (cosine similarity becomes a dot product).
            devices: data parallel: run one replica of the model per device (``["cuda:0",
                "cuda:1"]``, or ``["cpu", "cpu"]`` for CPU worker processes) for this call, in
                worker processes started and stopped around it. For repeated calls keep an
                :class:`~kv_embeddings_integrations.core.pool.EmbeddingPool` open instead
                (:meth:`start_pool`).

        Returns:
            float32 array of shape ``(len(texts), hidden_size)`` in input order; one string gives
            one vector of shape ``(hidden_size,)``.
        """
        if devices is not None:
            with self.start_pool(devices) as workers:
                return workers.encode(
                    texts,
                    prompt_type=prompt_type,
                    batch_size=batch_size,
                    normalize=normalize,
                    show_progress_bar=show_progress_bar,
                )
        items, single = texts_to_embed(texts, self.config.empty_text)
        result = self._embed_items(items, prompt_type, batch_size, show_progress_bar, normalize)
        self._warn_truncated(result, stacklevel=3)
        return result.vectors[0] if single else result.vectors

    def _warn_truncated(self, result: EmbedResult, stacklevel: int) -> None:
        result.warn_truncated(self.max_length, stacklevel=stacklevel)

    def _embed_items(
        self,
        items: list[str],
        prompt_type: str,
        batch_size: int | None,
        show: bool | None,
        normalize: bool,
        postprocess: bool = True,
        sparse: bool = False,
    ) -> EmbedResult:
        templates = self.templates(prompt_type)
        check_positive_int("batch_size", batch_size)
        rows = batch_size or self.batch_size
        processor = self.postprocessor if postprocess else None
        if sparse:
            self._lm_head()  # no head: say so before any pass
        if not items:
            empty = EmbedResult.empty(processor.dimensions if processor else self.hidden_size)
            return dataclasses.replace(empty, sparse=SparseVectors.empty(self.vocab_size)) if sparse else empty
        # One pass per template (MetaEOL has several); their pooled vectors are averaged.
        passes = []
        with self._progress(len(items) * len(templates), rows, show) as bar:
            for template in templates:
                parts = []
                # Chunks bound the token ids held at once, whatever the number of texts.
                for start in range(0, len(items), ENCODE_CHUNK):
                    parts.append(self._embed_texts(items[start : start + ENCODE_CHUNK], template, rows, bar, sparse))
                passes.append(EmbedResult.concatenate(parts))
        result = passes[0] if len(passes) == 1 else _average(passes)
        if not (normalize or processor):
            return result
        vectors = torch.nn.functional.normalize(torch.from_numpy(result.vectors), dim=-1).numpy()
        if processor is not None:
            vectors = processor.apply(vectors, normalize=normalize)
        return dataclasses.replace(result, vectors=vectors)

    def start_pool(self, devices: Sequence[str | torch.device]):
        """Start one worker process per device holding a replica of this embedder (data parallel).

        Args:
            devices: one entry per replica: ``["cuda:0", "cuda:1"]``, or ``["cpu", "cpu"]``.

        Returns:
            an :class:`~kv_embeddings_integrations.core.pool.EmbeddingPool`; use it as a context
            manager or call ``close()``. Its ``encode`` has this method's signature and splits the
            texts across the replicas, keeping their order.
        """
        return EmbeddingPool(self, devices)

    # -- concurrent requests ---------------------------------------------------------------------

    def submit_embed(
        self, texts: str | Iterable[str], *, prompt_type: str = "document", normalize: bool = True, sparse: bool = False
    ) -> Future:
        """Queue texts to be embedded together with other concurrent requests.

        Requests submitted from many threads (or tasks) while a forward pass runs are coalesced
        into the next one, instead of each running alone. Arguments as in :meth:`embed`.

        Returns:
            a ``concurrent.futures.Future`` of this request's own
            :class:`~kv_embeddings_integrations.core.results.EmbedResult` (its texts' vectors, token
            counts and truncation, whatever else shared the forward pass).
        """
        # Bad input fails here, in the caller, not in the worker.
        items, _ = texts_to_embed(texts, self.config.empty_text)
        self.template(prompt_type)
        if sparse:
            self._lm_head()
        if not items:
            done: Future = Future()
            empty = EmbedResult.empty(self.dimension)
            done.set_result(
                dataclasses.replace(empty, sparse=SparseVectors.empty(self.vocab_size)) if sparse else empty
            )
            return done
        with self._coalescer_lock:
            if self._coalescer is None:
                self._coalescer = RequestCoalescer(
                    self._embed_coalesced,
                    max_texts=COALESCE_MAX_TEXTS,
                    listeners=self.batch_listeners,
                    start_listeners=self.batch_start_listeners,
                )
            return self._coalescer.submit(items, prompt_type, normalize, sparse)

    def submit(self, texts: str | Iterable[str], *, prompt_type: str = "document", normalize: bool = True) -> Future:
        """:meth:`submit_embed`, for the array :meth:`encode` would return.

        Returns:
            a ``concurrent.futures.Future`` of what :meth:`encode` would return (truncation is
            warned when the result arrives).
        """
        single = isinstance(texts, str)
        future = self.submit_embed(texts, prompt_type=prompt_type, normalize=normalize)
        vectors: Future = Future()
        # A cancelled caller withdraws its request if it has not started yet.
        vectors.add_done_callback(lambda f: f.cancelled() and future.cancel())

        def transform(result: EmbedResult) -> np.ndarray:
            self._warn_truncated(result, stacklevel=2)
            return result.vectors[0] if single else result.vectors

        future.add_done_callback(lambda f: _chain(f, vectors, transform))
        return vectors

    async def aembed(
        self, texts: str | Iterable[str], *, prompt_type: str = "document", normalize: bool = True, sparse: bool = False
    ) -> EmbedResult:
        """:meth:`embed` for asyncio: awaits a coalesced request (see :meth:`submit_embed`) without
        blocking the event loop; a cancelled task withdraws its request if it has not started."""
        future = self.submit_embed(texts, prompt_type=prompt_type, normalize=normalize, sparse=sparse)
        return await asyncio.wrap_future(future)

    async def aencode(
        self, texts: str | Iterable[str], *, prompt_type: str = "document", normalize: bool = True
    ) -> np.ndarray:
        """:meth:`encode` for asyncio: awaits a coalesced request (see :meth:`submit_embed`) without
        blocking the event loop, and warns in the caller about its own truncated texts."""
        single = isinstance(texts, str)
        result = await self.aembed(texts, prompt_type=prompt_type, normalize=normalize)
        self._warn_truncated(result, stacklevel=3)
        return result.vectors[0] if single else result.vectors

    def _embed_coalesced(
        self, texts: list[str], prompt_type: str, normalize: bool, sparse: bool = False
    ) -> EmbedResult:
        return self.embed(texts, prompt_type=prompt_type, normalize=normalize, show_progress_bar=False, sparse=sparse)

    # -- the model, one level down: tokens, batches, forward passes ------------------------------

    def tokenize(
        self, texts: Sequence[str], prompt_type: str = "document", *, template: str | None = None
    ) -> list[EncodedText]:
        """The prompted token ids of each text as the model sees them (cut to ``max_length``), with
        ``prompt_type``'s (first) template or the given one of :meth:`templates`."""
        return self._prompt_tokenizer.encode(list(texts), template or self.template(prompt_type))

    def tokenize_strings(self, strings: Sequence[str], *, add_special_tokens: bool = True):
        """The tokenizer's output for whole strings (no prompt, no cut): ids, character offsets and
        the special-token mask; safe beside embedding calls in other threads."""
        return self._prompt_tokenizer.tokenize_strings(list(strings), add_special_tokens)

    def collate(self, encoded: Sequence[EncodedText]) -> TokenBatch:
        """Left-pad tokenized texts into one batch on the model's input device."""
        return collate(list(encoded), self._pad_token_id, self.device)

    def forward(self, batch: TokenBatch, *, output_hidden_states: bool = False, layers: list[int] | None = None):
        """One forward pass of the decoder, re-routing ``layers`` (default: the selected ones; ``[]``: none).

        Returns:
            the decoder's output (``last_hidden_state``, and ``hidden_states`` if asked).
        """
        layers = self.layers if layers is None else layers
        routing = rerouting.reroute(self.model, layers, self.config.bias) if layers else contextlib.nullcontext()
        prepending = contextlib.nullcontext()
        if batch.marker_index is not None and self.prepend_layers is not None:
            prepending = token_prepending.prepend(batch.marker_index, *self.prepend_layers)
        with torch.inference_mode(), routing, prepending:
            return self.decoder(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
                output_hidden_states=output_hidden_states,
            )

    def layer_states(
        self,
        texts: Sequence[str],
        *,
        prompt_type: str = "document",
        reroute: bool = False,
        show_progress_bar: bool | None = None,
    ) -> torch.Tensor:
        """Every layer's last-token hidden state of each prompted text (what layer selection measures).

        Args:
            texts: the texts.
            prompt_type: which prompt wraps them.
            reroute: re-route the selected layers (default: a plain forward pass).
            show_progress_bar: ``None`` shows one only for jobs of more than 10 batches.

        Returns:
            ``(len(texts), num_layers, hidden_size)`` float32 CPU tensor; ``[:, l]`` is layer ``l``'s
            output (the last one after the final norm). All layers come from one pass per batch.
        """
        encoded = self.tokenize(texts, prompt_type)
        states = torch.empty((len(encoded), self.num_layers, self.hidden_size), dtype=torch.float32)
        with self._progress(len(encoded), self.batch_size, show_progress_bar, "Layer states") as bar:
            for indices, batch in self._batches(encoded, self.batch_size):
                out = self.forward(batch, output_hidden_states=True, layers=None if reroute else [])
                # hidden_states[0] is the embedding output; [l + 1] is layer l's output.
                states[indices] = torch.stack([h[:, -1].float().cpu() for h in out.hidden_states[1:]], dim=1)
                bar.update(len(indices))
        return states

    def _progress(self, total: int, rows: int | None, show: bool | None, desc: str = "Embedding") -> tqdm:
        """A progress bar over ``total`` texts; by default shown only for jobs of many batches."""
        if show is None:
            show = total > PROGRESS_BAR_MIN_BATCHES * (rows or DEFAULT_BATCH_SIZE)
        return tqdm(total=total, desc=desc, unit="text", disable=not show)

    def _batches(self, encoded: list[EncodedText], batch_size: int | None) -> Iterator[tuple[list[int], TokenBatch]]:
        """Length-sorted, padded batches with their indices into ``encoded``."""
        for indices in plan_batches([len(e) for e in encoded], batch_size, self.config.max_tokens_per_batch):
            yield indices, self.collate([encoded[i] for i in indices])

    def _lm_head(self) -> torch.Tensor:
        return sparse_vectors.lm_head_weight(self.model)

    @property
    def vocab_size(self) -> int:
        """Rows of the LM head: the width of the sparse vectors."""
        return int(self.model.get_input_embeddings().weight.shape[0])

    def _embed_texts(
        self, items: list[str], template: str, batch_size: int | None, bar: tqdm, sparse: bool = False
    ) -> EmbedResult:
        """Pooled, unnormalised float32 vectors of ``items`` with their token counts and truncation
        (and their sparse vectors, with ``sparse``)."""
        chunk_mean = self.config.long_text == "chunk_mean"
        encoded = self._prompt_tokenizer.encode(items, template, truncate=not chunk_mean)
        long = [i for i, e in enumerate(encoded) if e.truncated]
        truncated = [e.truncated for e in encoded]
        counts = [len(e) for e in encoded]
        pieces = [1] * len(items)
        # Row r of the forward passes belongs to text owners[r], with weight weights[r].
        owners, weights = list(range(len(items))), [1.0] * len(items)
        if long and chunk_mean:
            # Each long text becomes pieces that fit: its first piece takes its row, the rest are
            # appended; the text's vector is the pieces' mean weighted by their text tokens.
            for i in long:
                split = self._prompt_tokenizer.split(items[i], template)
                piece_encoded = self._prompt_tokenizer.encode(split, template)
                truncated[i] = any(e.truncated for e in piece_encoded)  # only if re-tokenizing grew a piece
                counts[i], pieces[i] = sum(len(e) for e in piece_encoded), len(piece_encoded)
                piece_weights = [float(max(1, e.text_end - e.text_start)) for e in piece_encoded]
                encoded[i], weights[i] = piece_encoded[0], piece_weights[0]
                encoded += piece_encoded[1:]
                owners += [i] * (len(split) - 1)
                weights += piece_weights[1:]
        vectors = torch.empty((len(encoded), self.hidden_size), dtype=torch.float32)
        lexical: list[tuple[np.ndarray, np.ndarray]] = [None] * len(encoded)  # type: ignore[list-item]
        for indices, batch in self._batches(encoded, batch_size):
            batch = dataclasses.replace(batch, lexical=sparse)
            out = self._embed_finite(batch, [items[owners[r]] for r in indices])
            vectors[indices] = out[:, : self.hidden_size]
            if sparse:
                rows = sparse_vectors.rows_to_sparse(batch.input_ids, out[:, self.hidden_size :], batch.text_mask)
                for r, row in zip(indices, rows, strict=True):
                    lexical[r] = row
            bar.update(sum(r < len(items) for r in indices))  # each text once, by its first row
        if len(encoded) != len(items):
            weight, index = torch.tensor(weights), torch.tensor(owners)
            sums = torch.zeros((len(items), self.hidden_size)).index_add_(0, index, vectors * weight[:, None])
            vectors = sums / torch.zeros(len(items)).index_add_(0, index, weight)[:, None]
        lexical_vectors = None
        if sparse:
            by_text: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in items]
            for r, row in enumerate(lexical):
                by_text[owners[r]].append(row)
            merged = [sparse_vectors.merge_max(parts) for parts in by_text]
            lexical_vectors = SparseVectors(tuple(m[0] for m in merged), tuple(m[1] for m in merged), self.vocab_size)
        return EmbedResult(vectors.numpy(), tuple(counts), tuple(truncated), tuple(pieces), lexical_vectors)

    def _embed_finite(self, batch: TokenBatch, texts: list[str]) -> torch.Tensor:
        """:meth:`_embed_splitting` as float32 on the CPU, never with a NaN or infinite value.

        A half-precision model whose activations overflow is re-run for that batch in a float32
        copy; rows still not finite (or a float32 model's) raise ``FloatingPointError`` naming them.
        """
        vectors = self._embed_splitting(batch).float().cpu()
        bad = ~torch.isfinite(vectors).all(dim=1)
        if not bad.any():
            return vectors
        dtype = self.dtype
        if dtype in (torch.float16, torch.bfloat16) and not getattr(self.model, "hf_device_map", None):
            warnings.warn(
                f"{int(bad.sum())} texts gave non-finite values in {dtype}; re-embedding their batch in float32",
                stacklevel=5,  # _embed_texts, _embed_items, encode/embed, the caller
            )
            try:
                vectors = self._in_float32(batch)
            except torch.OutOfMemoryError:
                pass  # no room for a float32 copy: the texts are named below
            else:
                bad = ~torch.isfinite(vectors).all(dim=1)
                if not bad.any():
                    return vectors
        rows = bad.nonzero().flatten().tolist()
        shown = "; ".join(f"{texts[r][:60]!r}" for r in rows[:3])
        raise FloatingPointError(
            f"{len(rows)} texts gave NaN or infinite embeddings in {dtype} (first: {shown}); "
            "use float32 or bfloat16 weights, or check the model"
        )

    def _in_float32(self, batch: TokenBatch) -> torch.Tensor:
        """The batch's vectors from a float32 copy of the model (made for this call, then dropped)."""
        with self._float32_lock:
            model = copy.deepcopy(self.model).float()
            twin = dataclasses.replace(self.recipe(), model=model).build()
            try:
                return twin._embed_splitting(batch).float().cpu()
            finally:
                del twin, model

    def _embed_splitting(self, batch: TokenBatch) -> torch.Tensor:
        """:meth:`_embed_batch`, halving the batch on out-of-memory and retrying each half.

        The halves keep the batch's padded width, so each row is computed exactly as it would
        have been in the whole batch.
        """
        try:
            return self._embed_batch(batch)
        except torch.OutOfMemoryError:
            pass  # retry outside the handler: its traceback pins the failed pass's activations
        _release_memory()
        rows = batch.input_ids.shape[0]
        if rows == 1:
            raise torch.OutOfMemoryError(
                f"out of memory embedding a single text of {batch.input_ids.shape[1]} tokens after splitting "
                f"its batch down to 1 row on {self.device}; lower max_length (now {self.max_length}) "
                "or spread the model over more devices (device_map)"
            )
        half = rows // 2
        return torch.cat([self._embed_splitting(batch.rows(0, half)), self._embed_splitting(batch.rows(half, rows))])

    def _embed_batch(self, batch: TokenBatch) -> torch.Tensor:
        """Pooled vectors ``(rows, hidden_size)``; with ``batch.lexical``, each position's lexical
        weight follows as ``seq`` more columns, so the OOM split, the float32 retry and the
        finiteness check handle both without knowing of them."""
        if self.output_layer == self.num_layers - 1:
            out = self.forward(batch)
            hidden = out.last_hidden_state
        else:
            # hidden_states[0] is the embedding output; [l + 1] is layer l's (no final norm).
            out = self.forward(batch, output_hidden_states=True)
            hidden = out.hidden_states[self.output_layer + 1]
        mean_mask = batch.attention_mask.bool()
        if self.mean_scope == "text":
            # An empty text has no text tokens; its mean falls back to the whole prompt.
            has_text = batch.text_mask.any(dim=1, keepdim=True)
            mean_mask = torch.where(has_text, batch.text_mask, mean_mask)
        pooled = pool_hidden_states(hidden, mean_mask.to(hidden.device), self.pooling)
        if not batch.lexical:
            return pooled
        head = self._lm_head()
        softcap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        state = out.last_hidden_state[:, -1].to(head.device)
        with torch.inference_mode():
            weights = sparse_vectors.lexical_weights(
                state, head, batch.input_ids.to(head.device), batch.text_mask.to(head.device), softcap
            )
        return torch.cat([pooled, weights.to(pooled.device)], dim=1)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix between two sets of vectors (any normalisation)."""
        a = np.atleast_2d(a)
        b = np.atleast_2d(b)
        a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(min=1e-12)
        b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(min=1e-12)
        return a @ b.T
