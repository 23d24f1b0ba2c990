"""The core embedder every adapter delegates to."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np
import torch
from transformers import BatchEncoding, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import BaseModelOutputWithPast

from .concurrency.process_pool import EmbeddingPool
from .concurrency.recipe import EmbedderRecipe
from .concurrency.requests import ConcurrentRequests
from .config import EmbedderConfig
from .fitting.layer_selection import LayerSelection, layers_for
from .fitting.postprocessing import PostProcessor, processor_for
from .fitting.ranges import ranges_for
from .identity import embedder_identity, lexical_texts
from .method import rerouting, token_prepending
from .model.loading import LoadOptions, split_options
from .outputs import fusion
from .outputs import lexical as lexical_channel
from .outputs import sparse as sparse_vectors
from .outputs.quantization import SCALAR, QuantizationRanges, check_output, check_precision, quantize
from .outputs.sparse import SparseVectors
from .prompts import FAMILIES, METHODS, MethodSpec, PromptFamily, requested_prompt
from .resolved import ResolvedMethod
from .results import EmbedResult, TokenStates
from .running.inputs import check_positive_int, texts_to_embed
from .running.packing import packed_forward
from .running.runner import DEFAULT_BATCH_SIZE, runner_for
from .running.tokenization import EncodedText, PromptTokenizer, TokenBatch, collate

logger = logging.getLogger(__name__)

# Texts tokenized at once by encode: bounds the token ids held for very large inputs.
ENCODE_CHUNK = 16384


# State that belongs to this process: not pickled (the pool sends embedders to workers); the
# runner (with its lock) is rebuilt on unpickling.
_PROCESS_LOCAL = (
    "_coalescer",
    "_coalescer_lock",
    "runner",
    "batch_listeners",
    "batch_start_listeners",
    "_ranges_lock",
)


class KVEmbedder(ConcurrentRequests):
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
        lexical_statistics: already counted lexical statistics (as :attr:`lexical` holds), used
            instead of counting them on ``config.lexical_texts`` or reading the cache.
        **options: any :class:`EmbedderConfig` field: ``method``, ``prompt_family``, ``reroute``,
            ``layers``, ``bias``, ``pooling``, ``output_layer``, ``postprocess``, ``max_length``, ...

    The options are resolved once for the model into :attr:`resolved` (a
    :class:`~kv_embeddings_integrations.core.resolved.ResolvedMethod`), which everything that
    decides a vector reads. With ``layers="auto"``, the layers are selected (or read from the
    cache) at the end of construction, by
    :func:`~kv_embeddings_integrations.core.fitting.layer_selection.layers_for` on this otherwise
    built embedder; :attr:`layer_selection` holds the outcome. Post-processing, if any, is fitted
    (or read from the cache) after that, by
    :func:`~kv_embeddings_integrations.core.fitting.postprocessing.processor_for`.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: EmbedderConfig | None = None,
        *,
        name: str | None = None,
        load_options: LoadOptions | None = None,
        postprocessor: PostProcessor | None = None,
        lexical_statistics: lexical_channel.LexicalStatistics | None = None,
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
        # Every choice that decides a vector, resolved once: a bad option fails here, before any work.
        context = getattr(text_config, "max_position_embeddings", None)
        self.resolved = ResolvedMethod.resolve(self.config, self.num_layers, context)
        placeholder = None
        if self.resolved.token_prepending:
            token_prepending.install(self.decoder)
            placeholder = token_prepending.placeholder_id(tokenizer)
        self._prompt_tokenizer = PromptTokenizer(tokenizer, self.max_length, placeholder)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad_token_id = pad if pad is not None else 0
        # The batched forward passes (and their seam, runner.forward); layer selection below runs them.
        self.runner = runner_for(self, self._prompt_tokenizer)
        self._init_requests()
        self._ranges: QuantizationRanges | None = None  # fitted on first int8 / uint8 use
        self._ranges_lock = threading.Lock()
        # Nothing re-routed and no post-processing until chosen: both choices embed through this
        # otherwise built embedder.
        self.layers: list[int] = []
        self.layer_selection: LayerSelection | None = None
        self.postprocessor: PostProcessor | None = None
        self.layers, self.layer_selection = layers_for(self)
        if self.layers:
            rerouting.install(self.model)
        self.postprocessor = processor_for(self, postprocessor)
        self.lexical = self._lexical_channel(lexical_texts(self.config), lexical_statistics)

    def __getstate__(self) -> dict[str, Any]:
        # The request queue and its thread belong to this process.
        return {k: v for k, v in self.__dict__.items() if k not in _PROCESS_LOCAL}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_requests()
        self._ranges_lock = threading.Lock()
        self.runner = runner_for(self, self._prompt_tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str] | LoadOptions,
        *,
        config: EmbedderConfig | PretrainedConfig | None = None,
        **options: Any,
    ) -> KVEmbedder:
        """Load a model by hub id, local directory or bundled alias, and wrap it.

        Args:
            model: a model-hub id (``"Qwen/Qwen3-4B"``), a local directory, a bundled alias
                (``"smollm2-135m"``, converted once into the user cache), or a
                :class:`~kv_embeddings_integrations.core.model.loading.LoadOptions` (then no loading
                option may be given separately).
            config: an :class:`EmbedderConfig`, whose fields the embedder options override. (A
                transformers ``PretrainedConfig`` goes to ``AutoModel.from_pretrained`` instead.)
            **options: how to load the model, any
                :class:`~kv_embeddings_integrations.core.model.loading.LoadOptions` field (``dtype``,
                ``device``, ``device_map``, ``trust_remote_code``...; other
                ``AutoModel.from_pretrained`` arguments go in ``extra``), and what vectors to
                make, any :class:`EmbedderConfig` field (``method``, ``layers``, ``postprocess``...).
                Any other name is a ``TypeError`` that lists the valid ones.

        Returns:
            the embedder, its layers chosen and its post-processing fitted (or read from the cache).
        """
        loading, embedding = split_options(options)
        if config is not None and not isinstance(config, EmbedderConfig):
            # Not ours: a transformers config, which LoadOptions hands to AutoModel.from_pretrained.
            loading["config"], config = config, None
        # Bad options fail before a long load.
        config = config.with_options(**embedding) if config is not None else EmbedderConfig(**embedding)
        load = LoadOptions.of(model, **loading)
        hf_model, tokenizer = load.load()
        # A name as the caller wrote it (a relative directory stays relative in messages).
        name = load.model if isinstance(model, LoadOptions) else os.fspath(model)
        return cls(hf_model, tokenizer, config, name=name, load_options=load)

    # What the method resolved to (see ResolvedMethod), under the names front ends use.

    @property
    def spec(self) -> MethodSpec:
        """The preset of the method that runs."""
        return METHODS[self.resolved.method]

    @property
    def family(self) -> PromptFamily:
        """The prompt family: the config's ``prompt_family``, else the method's."""
        return FAMILIES[self.resolved.family]

    @property
    def reroutes(self) -> bool:
        """Whether re-routing is on (the config's ``reroute``, else the method's)."""
        return self.resolved.reroute

    @property
    def token_prepending(self) -> bool:
        """Whether Token Prepending is on (the config's, else the method's)."""
        return self.resolved.token_prepending

    @property
    def prepend_layers(self) -> tuple[int, int] | None:
        """``(start, stop)``: the layers whose input placeholder Token Prepending rewrites (``None``: off)."""
        return self.resolved.prepend_layers

    @property
    def pooling(self) -> str:
        """``"mean_last"``, ``"mean"`` or ``"last"``: the config's, else the method's or family's."""
        return self.resolved.pooling

    @property
    def mean_scope(self) -> str:
        """Which tokens mean pooling averages, ``"all"`` or ``"text"``."""
        return self.resolved.mean_scope

    @property
    def output_layer(self) -> int:
        """The pooled decoder layer, 0-based."""
        return self.resolved.output_layer

    @property
    def max_length(self) -> int:
        """Longest input in tokens, prompt included: the config's, else the model's context (at most 4096)."""
        return self.resolved.max_length

    @property
    def dimension(self) -> int:
        """Size of the vectors returned: the model's hidden size, or the post-processing's, plus the
        lexical half's columns when there is one."""
        dense = self.postprocessor.dimensions if self.postprocessor is not None else self.hidden_size
        return dense + (self.lexical.dim if self.lexical is not None else 0)

    def _lexical_channel(
        self, texts: Sequence[str], statistics: lexical_channel.LexicalStatistics | None = None
    ) -> lexical_channel.LexicalChannel | None:
        resolved = self.resolved
        if resolved.lexical == "sparse":
            self._lm_head()  # the sparse weights need the LM head: say so now, not at the first call
        return lexical_channel.channel_for(
            resolved.lexical,
            resolved.lexical_dim,
            resolved.lexical_weight,
            texts,
            self._prompt_tokenizer.fingerprint(),
            self._prompt_tokenizer.token_ids,
            self.vocab_size,
            self.name,
            statistics,
        )

    def fit_lexical_statistics(self, texts: Iterable[str]) -> lexical_channel.LexicalStatistics:
        """Count the lexical channel's statistics (IDF, mean length) on ``texts``, a sample of your
        own corpus, and use them from now on (cached like the built-in ones). Documents embedded
        with other statistics must be embedded again: the identity records their digest.

        Returns:
            the statistics (:attr:`lexical` holds them).
        """
        if self.lexical is None:
            raise ValueError("this embedder has no lexical channel (lexical='none'): nothing to fit")
        sample = [t for t in texts]
        if not sample or not all(isinstance(t, str) for t in sample):
            raise ValueError("fit_lexical_statistics needs a non-empty list of strings")
        channel = self._lexical_channel(sample)
        assert channel is not None  # the kind is unchanged
        self.lexical = channel
        self._ranges = None  # int8 ranges cover the lexical half: fitted again on next use
        return channel.statistics

    @property
    def batch_size(self) -> int | None:
        """Rows per batch: the config's, else 32, or unbounded under a token budget."""
        if self.config.batch_size is None and self.config.max_tokens_per_batch is None:
            return DEFAULT_BATCH_SIZE
        return self.config.batch_size

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embeddings."""
        embeddings: torch.nn.Module = self.decoder.get_input_embeddings()
        return cast(torch.Tensor, embeddings.weight).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights."""
        dtype: torch.dtype = next(self.model.parameters()).dtype
        return dtype

    def templates(self, prompt_type: str = "document") -> tuple[str, ...]:
        """The prompt templates used for ``prompt_type``: a name of the config's ``prompts``, or
        ``"document"`` / ``"query"`` (or a provider's name for one: ``search_query``, ``passage``,
        ...; see :attr:`prompt_names`), whose templates are the user's override, else the family's
        (MetaEOL has several: each text is embedded with each, and the vectors averaged); a
        symmetric task's queries get the document ones. An unknown name is a ``ValueError``."""
        return self.resolved.templates(prompt_type)

    @property
    def prompt_names(self) -> tuple[str, ...]:
        """Every name ``prompt_type`` / ``prompt_name`` takes: the config's own prompts, then
        ``document``, ``query`` and the other providers' names for them."""
        return self.resolved.prompt_names

    def template(self, prompt_type: str = "document") -> str:
        """The (first) prompt template used for ``prompt_type``; layer selection measures this one."""
        return self.templates(prompt_type)[0]

    def splices(self, prompt_type: str = "document") -> bool:
        """Whether token ids given as input (a :class:`~kv_embeddings_integrations.core.running.inputs.TokenIds`)
        are embedded exactly as given with ``prompt_type``'s templates: each of them splits
        (:meth:`~kv_embeddings_integrations.core.running.tokenization.PromptTokenizer.splits`). Where one
        does not, a ``TokenIds`` is embedded with it as its text (the ids decoded)."""
        return all(self._prompt_tokenizer.splits(t) for t in self.templates(prompt_type))

    def identity(self, *, normalize: bool = True, precision: str = "float32") -> dict[str, Any]:
        """What decides this embedder's vectors (model weights, prompts, layers, pooling,
        post-processing, output precision), as a JSON-able record to keep with stored vectors; see
        :mod:`~kv_embeddings_integrations.core.identity`.

        Args:
            normalize: whether the stored vectors are L2-normalised.
            precision: the precision they are stored in (:meth:`encode`'s ``precision``); int8 /
                uint8 add the digest of the fitted ranges, so other ranges are refused.
        """
        return embedder_identity(self, normalize=normalize, precision=precision)

    @property
    def quantization_ranges(self) -> QuantizationRanges:
        """The int8 / uint8 ranges: fitted on first use on the post-processing texts (the final
        vectors' per-dimension minimum and maximum), then cached; see
        :mod:`~kv_embeddings_integrations.core.outputs.quantization`."""
        with self._ranges_lock:
            if self._ranges is None:
                self._ranges = ranges_for(self)
            return self._ranges

    @quantization_ranges.setter
    def quantization_ranges(self, ranges: QuantizationRanges) -> None:
        # Ranges fitted elsewhere (Ray hands its actors the driver's), so every replica quantizes alike.
        if ranges.low.shape != (self.dimension,) or ranges.high.shape != (self.dimension,):
            raise ValueError(
                f"quantization ranges of shape {ranges.low.shape}, this embedder has {self.dimension} dimensions"
            )
        with self._ranges_lock:
            self._ranges = ranges

    def quantize(self, vectors: np.ndarray, precision: str) -> np.ndarray:
        """This embedder's final (normalised) float32 vectors in ``precision`` (one of
        :data:`~kv_embeddings_integrations.core.outputs.quantization.PRECISIONS`), int8 / uint8 with
        :attr:`quantization_ranges`."""
        precision = check_precision(precision)
        return quantize(vectors, precision, self.quantization_ranges if precision in SCALAR else None)

    def recipe(self) -> EmbedderRecipe:
        """What another process needs to rebuild this embedder (model, tokenizer, config, layers)."""
        statistics = self.lexical.statistics if self.lexical is not None else None
        return EmbedderRecipe(
            type(self),
            self.model,
            self.tokenizer,
            self.config,
            self.name,
            list(self.layers),
            self.postprocessor,
            statistics,
        )

    def __repr__(self) -> str:
        method = self.resolved
        return (
            f"KVEmbedder(model={self.name!r}, task={self.config.task!r}, method={method.method!r}, "
            f"family={method.family!r}, layers={self.layers}, bias={method.bias}, pooling={method.pooling!r}, "
            f"output_layer={method.output_layer}, postprocess={method.postprocess!r}, lexical={method.lexical!r})"
        )

    # -- embedding -------------------------------------------------------------------------------

    def embed(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        prompt_name: str | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        normalize: bool = True,
        postprocess: bool = True,
        sparse: bool = False,
        precision: str = "float32",
    ) -> EmbedResult:
        """Embed texts and report what the model saw of each: the call every front end builds on.

        Args:
            texts: one string (one row), or an iterable of strings.
            prompt_type: ``"document"`` (documents and symmetric tasks) or ``"query"`` (the query
                side of asymmetric retrieval), or any other of :attr:`prompt_names`; picks the
                prompt template.
            prompt_name: sentence-transformers' spelling: a name of the config's ``prompts`` (or
                of :attr:`prompt_names`); given, it is used instead of ``prompt_type``.
            batch_size: overrides the config's ``batch_size`` for this call.
            show_progress_bar: ``None`` shows one only for jobs of more than 10 batches.
            normalize: L2-normalise each vector (cosine similarity becomes a dot product).
            postprocess: apply the fitted post-processing (``False``: the vectors before it, of
                ``hidden_size``, normalised as ``normalize`` says).
            sparse: also compute each text's sparse lexical vector in the same forward pass
                (:mod:`~kv_embeddings_integrations.core.outputs.sparse`: the next-token logits at the prompt's
                end, ``log(1 + relu(z))``, kept for the text's own token ids), as ``result.sparse``.
            precision: ``"float32"``, ``"float16"``, ``"int8"``, ``"uint8"`` (scalar quantization
                with :attr:`quantization_ranges`; needs ``normalize`` and ``postprocess``),
                ``"binary"`` or ``"ubinary"`` (sign bits packed 8 to a byte, as int8 / uint8).

        Returns:
            an :class:`~kv_embeddings_integrations.core.results.EmbedResult`: ``(n, dimension)``
            vectors (float32 unless ``precision`` says otherwise) in input order, each text's token
            count (prompt included) and whether it was truncated or split. Nothing is warned: the
            caller decides how to report truncation.
        """
        prompt_type = requested_prompt(prompt_type, prompt_name)
        precision = check_output(precision, normalize, postprocess)
        items, _ = texts_to_embed(texts, self.config.empty_text)
        result = self._embed_items(items, prompt_type, batch_size, show_progress_bar, normalize, postprocess, sparse)
        if precision == "float32":
            return result
        return dataclasses.replace(result, vectors=self.quantize(result.vectors, precision))

    def embed_tokens(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        prompt_name: str | None = None,
        batch_size: int | None = None,
    ) -> TokenStates:
        """Every token's hidden state at the pooled layer (a server's ``/embed_all``), from the same
        forward pass as :meth:`embed` (selected layers re-routed, Token Prepending when on).

        Each text is wrapped in ``prompt_type``'s first template and cut to ``max_length``; its states
        cover every token of that prompted sequence (special tokens, prompt, Token Prepending's
        placeholder), in order, without padding: ``last_hidden_state`` (after the final norm) when
        the last layer is pooled, else that layer's output. Raw: not pooled, post-processed or
        normalised.

        Args:
            texts: one string (one entry), or an iterable of strings; a
                :class:`~kv_embeddings_integrations.core.running.inputs.TokenIds` is spliced as for :meth:`embed`.
            prompt_type: picks the prompt, as for :meth:`embed`.
            prompt_name: a prompt name instead of ``prompt_type``, as for :meth:`embed`.
            batch_size: overrides the config's ``batch_size`` for this call.

        Returns:
            a :class:`~kv_embeddings_integrations.core.results.TokenStates`: one
            ``(n_tokens, hidden_size)`` float32 array per text, in input order, and whether each was cut.
        """
        prompt_type = requested_prompt(prompt_type, prompt_name)
        check_positive_int("batch_size", batch_size)
        template = self.template(prompt_type)
        items, _ = texts_to_embed(texts, self.config.empty_text)
        if not items:
            return TokenStates((), ())
        encoded = self._prompt_tokenizer.encode(items, template)
        states = self.runner.token_states(encoded, batch_size or self.batch_size)
        return TokenStates(tuple(states), tuple(e.truncated for e in encoded))

    def encode_sparse(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        prompt_name: str | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> SparseVectors:
        """Sparse lexical vectors of texts (PromptReps-style), from the same pass as :meth:`encode`'s.

        Each text's weights cover only its own token ids. Score a query against documents by the dot
        product of their weights (:func:`~kv_embeddings_integrations.core.outputs.fusion.sparse_scores`); fuse with
        the dense scores through :mod:`~kv_embeddings_integrations.core.outputs.fusion`. A pass that needs both
        should call :meth:`embed` with ``sparse=True`` instead: one forward pass gives both.

        Args:
            texts: one string, or an iterable of strings.
            prompt_type: ``"document"`` or ``"query"`` (or another prompt name), as for :meth:`encode`.
            prompt_name: a prompt name instead of ``prompt_type``, as for :meth:`encode`.
            batch_size: overrides the config's ``batch_size`` for this call.
            show_progress_bar: ``None`` shows one only for jobs of more than 10 batches.
        """
        result = self.embed(
            texts,
            prompt_type=prompt_type,
            prompt_name=prompt_name,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            sparse=True,
        )
        self._warn_truncated(result, stacklevel=3)
        assert result.sparse is not None  # asked for
        return result.sparse

    def encode(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        prompt_name: str | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        normalize: bool = True,
        precision: str = "float32",
        devices: Sequence[str | torch.device] | None = None,
    ) -> np.ndarray:
        """Embed texts into an array (:meth:`embed`'s vectors), warning when texts were truncated.

        Args:
            texts: one string, or an iterable of strings.
            prompt_type: ``"document"`` (documents and symmetric tasks) or ``"query"`` (the query
                side of asymmetric retrieval), or any other of :attr:`prompt_names`; picks the
                prompt template.
            prompt_name: sentence-transformers' spelling: a name of the config's ``prompts`` (or
                of :attr:`prompt_names`); given, it is used instead of ``prompt_type``.
            batch_size: overrides the config's ``batch_size`` for this call.
            show_progress_bar: ``None`` shows one only for jobs of more than 10 batches.
            normalize: L2-normalise each vector (cosine similarity becomes a dot product).
            precision: the output's precision, as for :meth:`embed` (sentence-transformers'
                ``precision``): ``float32``, ``float16``, ``int8``, ``uint8``, ``binary``, ``ubinary``.
            devices: data parallel: run one replica of the model per device (``["cuda:0",
                "cuda:1"]``, or ``["cpu", "cpu"]`` for CPU worker processes) for this call, in
                worker processes started and stopped around it. For repeated calls keep an
                :class:`~kv_embeddings_integrations.core.concurrency.process_pool.EmbeddingPool` open instead
                (:meth:`start_pool`).

        Returns:
            array of shape ``(len(texts), dimension)`` in input order (``ceil(dimension / 8)``
            columns for binary precisions); one string gives one vector of shape ``(dimension,)``.
        """
        prompt_type = requested_prompt(prompt_type, prompt_name)
        precision = check_output(precision, normalize, True)
        if devices is not None:
            with self.start_pool(devices) as workers:
                vectors: np.ndarray = workers.encode(
                    texts,
                    prompt_type=prompt_type,
                    batch_size=batch_size,
                    normalize=normalize,
                    show_progress_bar=show_progress_bar,
                    precision=precision,
                )
                return vectors
        items, single = texts_to_embed(texts, self.config.empty_text)
        result = self._embed_items(items, prompt_type, batch_size, show_progress_bar, normalize)
        self._warn_truncated(result, stacklevel=3)
        vectors = result.vectors if precision == "float32" else self.quantize(result.vectors, precision)
        return vectors[0] if single else vectors

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
        # The lexical half belongs to the final vectors: not to raw (unpostprocessed) ones.
        channel = self.lexical if postprocess else None
        if channel is not None and not normalize:
            raise ValueError(
                "normalize=False: the lexical channel joins unit-length dense and lexical halves; embed with "
                "normalize=True, or use an embedder with lexical='none' for unnormalised vectors"
            )
        with_sparse = sparse or (channel is not None and channel.kind == "sparse")
        if with_sparse:
            self._lm_head()  # no head: say so before any pass
        if not items:
            dense = processor.dimensions if processor else self.hidden_size
            empty = EmbedResult.empty(dense + (channel.dim if channel is not None else 0))
            return dataclasses.replace(empty, sparse=SparseVectors.empty(self.vocab_size)) if sparse else empty
        # ENCODE_CHUNK read at call time: tests shrink it.
        result = self.runner.run_templates(items, templates, rows, show, with_sparse, ENCODE_CHUNK)
        if not (normalize or processor):
            return result
        vectors = torch.nn.functional.normalize(torch.from_numpy(result.vectors), dim=-1).numpy()
        if processor is not None:
            vectors = processor.apply(vectors, normalize=normalize)
        if channel is not None:
            vectors = self.with_lexical(vectors, items, prompt_type=prompt_type, sparse=result.sparse)
        return dataclasses.replace(result, vectors=vectors, sparse=result.sparse if sparse else None)

    def lexical_rows(
        self, texts: Sequence[str], *, prompt_type: str = "document", sparse: SparseVectors | None = None
    ) -> list[lexical_channel.SparseRow]:
        """Each text's lexical weights (token ids, weights) before the sketch, for ``prompt_type``'s
        side: what :meth:`with_lexical` sketches (for an exact reference, or another sketch).

        Args:
            texts: the texts, as embedded.
            prompt_type: the prompt they were embedded with (its side: query or document).
            sparse: their sparse vectors from the same pass (``embed(..., sparse=True)``); needed
                when ``lexical="sparse"``.
        """
        channel = self.lexical
        if channel is None:
            raise ValueError("this embedder has no lexical channel (lexical='none')")
        side = self.resolved.side(prompt_type)
        if channel.kind == "bm25":
            counted = [t.lower() for t in texts] if channel.lowercase else list(texts)
            return channel.rows(side, token_ids=self._prompt_tokenizer.token_ids(counted))
        if sparse is None or len(sparse) != len(texts):
            raise ValueError("lexical='sparse' needs the texts' sparse vectors from the same pass, one per text")
        return channel.rows(side, sparse=list(zip(sparse.indices, sparse.values, strict=True)))

    def encode_lexical(
        self, texts: str | Iterable[str], *, prompt_type: str = "document", prompt_name: str | None = None
    ) -> SparseVectors:
        """The lexical half's weights as sparse vectors, unsketched: a partner for a store that holds
        sparse vectors (Qdrant), beside or instead of the one vector's sketch.

        Documents get their unit-length weights (BM25's saturated term frequencies, or the model's
        sparse weights), queries their IDF-weighted ones, so a sparse store's dot product ranks by
        the exact lexical cosine (the sketch only estimates it). No IDF modifier is needed in the
        store: the query carries it. Needs a lexical channel (``lexical`` other than ``"none"``).
        """
        if self.lexical is None:
            raise ValueError(
                "encode_lexical needs a lexical channel: build the embedder with lexical='bm25' or 'sparse'"
            )
        prompt_type = requested_prompt(prompt_type, prompt_name)
        items, _ = texts_to_embed(texts, self.config.empty_text)
        sparse = self.encode_sparse(items, prompt_type=prompt_type) if self.lexical.kind == "sparse" else None
        rows = self.lexical_rows(items, prompt_type=prompt_type, sparse=sparse)
        if self.resolved.side(prompt_type) == "document":
            rows = lexical_channel.unit(rows)
        return SparseVectors(
            tuple(ids for ids, _ in rows), tuple(values.astype(np.float32) for _, values in rows), self.vocab_size
        )

    def with_lexical(
        self,
        dense: np.ndarray,
        texts: Sequence[str],
        *,
        prompt_type: str = "document",
        sparse: SparseVectors | None = None,
    ) -> np.ndarray:
        """Final dense vectors (unit rows, post-processed) with the texts' lexical half appended:
        what :meth:`encode` returns, from dense vectors kept elsewhere (an evaluation's cache).

        Args:
            dense: ``(len(texts), dense dimension)`` unit vectors.
            texts: the texts they embed.
            prompt_type: the prompt they were embedded with (its side: query or document).
            sparse: their sparse vectors from the same pass, when ``lexical="sparse"``.
        """
        channel = self.lexical
        if channel is None:
            raise ValueError("this embedder has no lexical channel (lexical='none')")
        rows = self.lexical_rows(texts, prompt_type=prompt_type, sparse=sparse)
        return channel.vectors(dense, rows, self.resolved.side(prompt_type))

    def start_pool(self, devices: Sequence[str | torch.device]) -> EmbeddingPool:
        """Start one worker process per device holding a replica of this embedder (data parallel).

        Args:
            devices: one entry per replica: ``["cuda:0", "cuda:1"]``, or ``["cpu", "cpu"]``.

        Returns:
            an :class:`~kv_embeddings_integrations.core.concurrency.process_pool.EmbeddingPool`; use it as a context
            manager or call ``close()``. Its ``encode`` / ``embed`` take :meth:`encode`'s
            arguments (less ``devices``), split the texts across the replicas and keep their order.
        """
        return EmbeddingPool(self, devices)

    # -- the model, one level down: tokens, batches, forward passes ------------------------------

    def tokenize(
        self, texts: Sequence[str], prompt_type: str = "document", *, template: str | None = None
    ) -> list[EncodedText]:
        """The prompted token ids of each text as the model sees them (cut to ``max_length``), with
        ``prompt_type``'s (first) template or the given one of :meth:`templates`."""
        return self._prompt_tokenizer.encode(list(texts), template or self.template(prompt_type))

    def tokenize_strings(self, strings: Sequence[str], *, add_special_tokens: bool = True) -> BatchEncoding:
        """The tokenizer's output for whole strings (no prompt, no cut): ids, character offsets and
        the special-token mask; safe beside embedding calls in other threads."""
        return self._prompt_tokenizer.tokenize_strings(list(strings), add_special_tokens)

    def collate(self, encoded: Sequence[EncodedText]) -> TokenBatch:
        """Left-pad tokenized texts into one batch on the model's input device."""
        return collate(list(encoded), self._pad_token_id, self.device)

    def forward(
        self, batch: TokenBatch, *, output_hidden_states: bool = False, layers: list[int] | None = None
    ) -> BaseModelOutputWithPast:
        """One forward pass of the decoder, re-routing ``layers`` (default: the selected ones; ``[]``: none).

        Returns:
            the decoder's output (``last_hidden_state``, and ``hidden_states`` if asked).
        """
        layers = self.layers if layers is None else layers
        if self.config.batching == "packed" and batch.input_ids.shape[0] > 1:
            return packed_forward(self, batch, output_hidden_states, layers, self._pad_token_id)
        routing = rerouting.reroute(self.model, layers, self.config.bias) if layers else contextlib.nullcontext()
        prepending: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if batch.marker_index is not None and self.prepend_layers is not None:
            prepending = token_prepending.prepend(batch.marker_index, *self.prepend_layers)
        with torch.inference_mode(), routing, prepending:
            out: BaseModelOutputWithPast = self.decoder(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
                output_hidden_states=output_hidden_states,
            )
        return out

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
        return self.runner.layer_states(encoded, self.batch_size, show_progress_bar, None if reroute else [])

    def _lm_head(self) -> torch.Tensor:
        return sparse_vectors.lm_head_weight(self.model)

    @property
    def vocab_size(self) -> int:
        """Rows of the LM head: the width of the sparse vectors."""
        return self.runner.vocab_size

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix between two sets of vectors (any normalisation)."""
        return fusion.cosine_scores(a, b)
