"""The core embedder every adapter delegates to."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from .call_options import CallOptions
from .concurrency.process_pool import EmbeddingPool
from .concurrency.recipe import EmbedderRecipe
from .concurrency.requests import RequestQueue, then
from .config import EmbedderConfig
from .fitting.layer_selection import layers_for
from .fitting.postprocessing import PostProcessor, processor_for
from .fitting.ranges import ranges_for
from .fitting.subject import Fitting
from .identity import embedder_identity, lexical_texts
from .model.loading import LoadOptions, load_for_embedding
from .outputs import lexical as lexical_channel
from .outputs.quantization import SCALAR, QuantizationRanges, RangesOnDemand, check_precision, quantize
from .outputs.sparse import SparseVectors
from .results import EmbedResult, TokenStates
from .running.inputs import texts_to_embed
from .running.prompted_model import PromptedModel

# Texts tokenized at once by encode: bounds the token ids held for very large inputs.
ENCODE_CHUNK = 16384

# State that belongs to this process: not pickled (Ray and pickling users send embedders to other
# processes); the request queue (and, by PromptedModel, the runner) are rebuilt on unpickling.
_PROCESS_LOCAL = ("requests", "_ranges")


class KVEmbedder(PromptedModel):
    """Text embeddings from a frozen decoder-only LLM by KV re-routing (arXiv 2601.01046).

    Wraps an already-loaded model; ``from_pretrained`` loads one by name.

    Args:
        model: a transformers ``PreTrainedModel`` (a ``*ForCausalLM`` or its base ``*Model``).
        tokenizer: its fast tokenizer.
        name: how to name the model in messages and caches (defaults to its ``name_or_path``).
        load_options: how the model was loaded, when ``from_pretrained`` loaded it.
        config: an [`EmbedderConfig`][kv_embeddings_integrations.core.config.EmbedderConfig]; keyword ``options``
            override its fields.
        postprocessor: an already fitted post-processing (as ``postprocessor`` holds), used
            instead of fitting or reading the cache; must match ``config.postprocess``.
        lexical_statistics: already counted lexical statistics (as ``lexical`` holds), used
            instead of counting them on ``config.lexical_texts`` or reading the cache.
        **options: any ``EmbedderConfig`` field: ``method``, ``prompt_family``, ``reroute``,
            ``layers``, ``bias``, ``pooling``, ``output_layer``, ``postprocess``, ``max_length``, ...

    The layers (with ``layers="auto"``) and the post-processing are chosen and fitted, or read from
    the cache, on a [`Fitting`][kv_embeddings_integrations.core.fitting.subject.Fitting] (a plain
    runner over the model), never on this half-built embedder; ``layer_selection`` holds the choice.
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
        config = config.with_options(**options) if config is not None else EmbedderConfig(**options)
        super().__init__(model, tokenizer, config, name=name, load_options=load_options)
        # The layers are chosen on a plain runner over the model, the post-processing fitted on one
        # re-routing them (setting ``layers`` gives the embedder's runner their plan).
        fitting = Fitting(self.name, self.config, self.resolved, self.runner, self.batch_size, ENCODE_CHUNK)
        self.layers, self.layer_selection = layers_for(fitting)
        routed = dataclasses.replace(fitting, runner=self.runner)
        self.postprocessor = processor_for(routed, routed.unit_vectors, postprocessor)
        self.lexical = self._lexical_channel(lexical_texts(self.config), lexical_statistics)
        self._ranges = RangesOnDemand()
        self.requests = RequestQueue(self._embed_items)

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in super().__getstate__().items() if k not in _PROCESS_LOCAL}
        return {**state, "_known_ranges": self._ranges.known}  # ranges set or fitted travel along

    def __setstate__(self, state: dict[str, Any]) -> None:
        known = state.pop("_known_ranges", None)
        super().__setstate__(state)
        self._ranges = RangesOnDemand(known)
        self.requests = RequestQueue(self._embed_items)

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
            model: a hub id (``"Qwen/Qwen3-4B"``), a local directory, a bundled alias
                (``"smollm2-135m"``), or a [`LoadOptions`][kv_embeddings_integrations.core.model.loading.LoadOptions].
            config: an ``EmbedderConfig`` the options override (a transformers ``PretrainedConfig``
                goes to ``AutoModel.from_pretrained``).
            **options: any ``LoadOptions`` field (``dtype``, ``device``, ``device_map``...) and any
                ``EmbedderConfig`` field (``method``, ``layers``...); another name is a ``TypeError``.
        """
        hf_model, tokenizer, config, name, load = load_for_embedding(model, config, options)
        return cls(hf_model, tokenizer, config, name=name, load_options=load)

    @property
    def dimension(self) -> int:
        """Size of the vectors returned: the model's hidden size, or the post-processing's, plus the
        lexical half's columns when there is one."""
        dense = self.postprocessor.dimensions if self.postprocessor is not None else self.hidden_size
        return dense + (self.lexical.dim if self.lexical is not None else 0)

    @property
    def batch_listeners(self) -> list[Any]:
        """The request queue's ``listeners``: called after each coalesced pass with its size."""
        return self.requests.listeners

    @property
    def batch_start_listeners(self) -> list[Any]:
        """The request queue's ``start_listeners``: called just before each coalesced pass."""
        return self.requests.start_listeners

    def identity(self, *, normalize: bool = True, precision: str = "float32") -> dict[str, Any]:
        """What decides this embedder's vectors, stored ``normalize``-d in ``precision``: a
        JSON-able record to keep with them
        ([`embedder_identity`][kv_embeddings_integrations.core.identity.embedder_identity])."""
        return embedder_identity(self, normalize=normalize, precision=precision)

    @property
    def quantization_ranges(self) -> QuantizationRanges:
        """The int8 / uint8 ranges: fitted on first use on the post-processing texts (the final
        vectors' per-dimension minimum and maximum), then cached; see
        [`quantization`][kv_embeddings_integrations.core.outputs.quantization]."""
        return self._ranges.get(lambda: ranges_for(self, lambda texts: self.embed(texts).vectors))

    @quantization_ranges.setter
    def quantization_ranges(self, ranges: QuantizationRanges) -> None:
        # Ranges fitted elsewhere (Ray hands its actors the driver's), so every replica quantizes alike.
        self._ranges.set(ranges, self.dimension)

    def quantize(self, vectors: np.ndarray, precision: str) -> np.ndarray:
        """This embedder's final (normalised) float32 vectors in ``precision`` (one of
        ``PRECISIONS``), int8 / uint8 with ``quantization_ranges``."""
        precision = check_precision(precision)
        return quantize(vectors, precision, self.quantization_ranges if precision in SCALAR else None)

    def recipe(self) -> EmbedderRecipe:
        """What another process needs to rebuild this embedder (model, tokenizer, config, layers)."""
        statistics = self.lexical.statistics if self.lexical is not None else None
        return EmbedderRecipe(
            type(self), self.model, self.tokenizer, self.config, self.name, list(self.layers), self.postprocessor,
            statistics,
        )  # fmt: skip

    def __repr__(self) -> str:
        m = self.resolved
        return (
            f"KVEmbedder(model={self.name!r}, task={self.config.task!r}, method={m.method!r}, family={m.family!r}, "
            f"layers={self.layers}, bias={m.bias}, pooling={m.pooling!r}, output_layer={m.output_layer}, "
            f"postprocess={m.postprocess!r}, lexical={m.lexical!r})"
        )

    # -- embedding: every entry point builds one CallOptions and goes down one path -------------

    def call_options(self, **options: Any) -> CallOptions:
        """One call's [`CallOptions`][kv_embeddings_integrations.core.call_options.CallOptions],
        checked against this embedder's prompts: the keyword arguments of ``embed``."""
        return CallOptions.of(self.resolved, **options)

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

        ``texts``: one string (one row) or an iterable of strings (a
        [`TokenIds`][kv_embeddings_integrations.core.running.inputs.TokenIds] is spliced in as
        given); the other arguments are
        [`CallOptions`][kv_embeddings_integrations.core.call_options.CallOptions]'s.

        Returns:
            an [`EmbedResult`][kv_embeddings_integrations.core.results.EmbedResult]:
            ``(n, dimension)`` vectors in input order, each text's token count and truncation, and
            the sparse vectors if asked. Nothing is warned: the caller decides how to report
            truncation.
        """
        options = self.call_options(
            prompt_type=prompt_type, prompt_name=prompt_name, batch_size=batch_size,
            show_progress_bar=show_progress_bar, normalize=normalize, postprocess=postprocess, sparse=sparse,
            precision=precision,
        )  # fmt: skip
        items, _ = texts_to_embed(texts, self.config.empty_text)
        return self._quantized(self._embed_items(items, options), options)

    def embed_with(self, texts: Sequence[str], options: CallOptions) -> EmbedResult:
        """``embed`` with its options already built (``call_options``): what workers run."""
        items, _ = texts_to_embed(texts, self.config.empty_text)
        return self._quantized(self._embed_items(items, options), options)

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
        """Embed texts into an array (``embed``'s vectors), warning when texts were truncated.

        Arguments as for ``embed``, and ``devices``: one replica of the model per device
        (``["cuda:0", "cuda:1"]``, or ``["cpu", "cpu"]``) in worker processes started and stopped
        around this call (for repeated calls keep a pool open: ``start_pool``).

        Returns:
            array of shape ``(len(texts), dimension)`` in input order (``ceil(dimension / 8)``
            columns for binary precisions); one string gives one vector of shape ``(dimension,)``.
        """
        options = self.call_options(
            prompt_type=prompt_type, prompt_name=prompt_name, batch_size=batch_size,
            show_progress_bar=show_progress_bar, normalize=normalize, precision=precision,
        )  # fmt: skip
        if devices is not None:
            with self.start_pool(devices) as workers:
                return workers.encode(
                    texts, prompt_type=options.prompt_type, batch_size=batch_size, normalize=normalize,
                    show_progress_bar=show_progress_bar, precision=precision,
                )  # fmt: skip
        items, single = texts_to_embed(texts, self.config.empty_text)
        result = self._embed_items(items, options)
        result.warn_truncated(self.max_length, stacklevel=2)
        vectors = self._quantized(result, options).vectors
        return vectors[0] if single else vectors

    def encode_sparse(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        prompt_name: str | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> SparseVectors:
        """Sparse lexical vectors of texts (PromptReps-style), from the same pass as ``encode``'s:
        each covers only its text's own token ids; score and fuse them with
        [`fusion`][kv_embeddings_integrations.core.outputs.fusion] (``embed(sparse=True)`` gives
        both kinds from one pass)."""
        options = self.call_options(
            prompt_type=prompt_type, prompt_name=prompt_name, batch_size=batch_size,
            show_progress_bar=show_progress_bar, sparse=True,
        )  # fmt: skip
        items, _ = texts_to_embed(texts, self.config.empty_text)
        result = self._embed_items(items, options)
        result.warn_truncated(self.max_length, stacklevel=2)
        assert result.sparse is not None  # asked for
        return result.sparse

    def embed_tokens(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        prompt_name: str | None = None,
        batch_size: int | None = None,
    ) -> TokenStates:
        """Every token's hidden state at the pooled layer (a server's ``/embed_all``), from the same
        pass as ``embed``: each text in ``prompt_type``'s first template, cut to ``max_length``, all
        its tokens in order, without padding; raw (not pooled, post-processed or normalised).
        Returns a [`TokenStates`][kv_embeddings_integrations.core.results.TokenStates]: one
        ``(n_tokens, hidden_size)`` float32 array per text, and whether each was cut."""
        options = self.call_options(prompt_type=prompt_type, prompt_name=prompt_name, batch_size=batch_size)
        items, _ = texts_to_embed(texts, self.config.empty_text)
        if not items:
            return TokenStates((), ())
        encoded = self._prompt_tokenizer.encode(items, self.template(options.prompt_type))
        states = self.runner.token_states(encoded, options.batch_size or self.batch_size)
        return TokenStates(tuple(states), tuple(e.truncated for e in encoded))

    def _quantized(self, result: EmbedResult, options: CallOptions) -> EmbedResult:
        if options.precision == "float32":
            return result
        return dataclasses.replace(result, vectors=self.quantize(result.vectors, options.precision))

    def _embed_items(self, items: list[str], options: CallOptions) -> EmbedResult:
        """Float32 vectors of checked texts: the runner's, normalised, post-processed and joined
        with the lexical half as ``options`` say."""
        processor = self.postprocessor if options.postprocess else None
        # The lexical half belongs to the final vectors: not to raw (unpostprocessed) ones.
        channel = self.lexical if options.postprocess else None
        if channel is not None and not options.normalize:
            raise ValueError(
                "normalize=False: the lexical channel joins unit-length dense and lexical halves; embed with "
                "normalize=True, or use an embedder with lexical='none' for unnormalised vectors"
            )
        with_sparse = options.sparse or (channel is not None and channel.kind == "sparse")
        if with_sparse:
            self._lm_head()  # no head: say so before any pass
        if not items:
            dense = processor.dimensions if processor else self.hidden_size
            empty = EmbedResult.empty(dense + (channel.dim if channel is not None else 0))
            return dataclasses.replace(empty, sparse=SparseVectors.empty(self.vocab_size)) if options.sparse else empty
        rows = options.batch_size or self.batch_size
        templates = self.templates(options.prompt_type)
        # ENCODE_CHUNK read at call time: tests shrink it.
        result = self.runner.run_templates(items, templates, rows, options.show_progress_bar, with_sparse, ENCODE_CHUNK)
        if not (options.normalize or processor):
            return result
        vectors = torch.nn.functional.normalize(torch.from_numpy(result.vectors), dim=-1).numpy()
        if processor is not None:
            vectors = processor.apply(vectors, normalize=options.normalize)
        if channel is not None:
            vectors = self.with_lexical(vectors, items, prompt_type=options.prompt_type, sparse=result.sparse)
        return dataclasses.replace(result, vectors=vectors, sparse=result.sparse if options.sparse else None)

    # -- concurrent requests: coalesced into shared passes by the request queue ------------------

    def submit_embed(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        prompt_name: str | None = None,
        normalize: bool = True,
        sparse: bool = False,
        precision: str = "float32",
    ) -> Future[EmbedResult]:
        """Queue texts to be embedded with other concurrent requests: those submitted from many
        threads (or tasks) while a pass runs share the next one. Returns a ``Future`` of this
        request's own ``EmbedResult`` (quantized, if asked, when the pass is done)."""
        options = self.call_options(
            prompt_type=prompt_type, prompt_name=prompt_name, normalize=normalize, sparse=sparse, precision=precision
        )
        items, _ = texts_to_embed(texts, self.config.empty_text)  # bad input fails in the caller
        if sparse:
            self._lm_head()
        future = self.requests.submit(items, options.replace(precision="float32", show_progress_bar=False))
        return future if options.precision == "float32" else then(future, lambda r: self._quantized(r, options))

    def submit(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        prompt_name: str | None = None,
        normalize: bool = True,
        precision: str = "float32",
    ) -> Future[np.ndarray]:
        """``submit_embed``, for a future of what ``encode`` would return (truncation is warned
        when the result arrives)."""
        single = isinstance(texts, str)
        future = self.submit_embed(
            texts, prompt_type=prompt_type, prompt_name=prompt_name, normalize=normalize, precision=precision
        )

        max_length = self.max_length  # not self: a pending callback must not hold the embedder

        def vectors(result: EmbedResult) -> np.ndarray:
            result.warn_truncated(max_length, stacklevel=1)
            return result.vectors[0] if single else result.vectors

        return then(future, vectors)

    async def aembed(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        prompt_name: str | None = None,
        normalize: bool = True,
        sparse: bool = False,
        precision: str = "float32",
    ) -> EmbedResult:
        """``embed`` for asyncio: awaits a coalesced request (``submit_embed``) without blocking
        the event loop; a cancelled task withdraws its request if it has not started."""
        future = self.submit_embed(
            texts, prompt_type=prompt_type, prompt_name=prompt_name, normalize=normalize, sparse=sparse,
            precision=precision,
        )  # fmt: skip
        return await asyncio.wrap_future(future)

    async def aencode(
        self,
        texts: str | Iterable[str],
        *,
        prompt_type: str = "document",
        prompt_name: str | None = None,
        normalize: bool = True,
        precision: str = "float32",
    ) -> np.ndarray:
        """``encode`` for asyncio: awaits a coalesced request, and warns in the caller about its
        own truncated texts."""
        single = isinstance(texts, str)
        result = await self.aembed(
            texts, prompt_type=prompt_type, prompt_name=prompt_name, normalize=normalize, precision=precision
        )
        result.warn_truncated(self.max_length, stacklevel=2)
        return result.vectors[0] if single else result.vectors

    def start_pool(self, devices: Sequence[str | torch.device]) -> EmbeddingPool:
        """One worker process per device (``["cuda:0", "cuda:1"]``, ``["cpu", "cpu"]``), each with a
        replica: an [`EmbeddingPool`][kv_embeddings_integrations.core.concurrency.process_pool.EmbeddingPool]."""
        return EmbeddingPool(self, devices)

    def _lexical_channel(
        self, texts: Sequence[str], statistics: lexical_channel.LexicalStatistics | None = None
    ) -> lexical_channel.LexicalChannel | None:
        resolved = self.resolved
        if resolved.lexical == "sparse":
            self._lm_head()  # the sparse weights need the LM head: say so now, not at the first call
        return lexical_channel.channel_for(
            resolved.lexical, resolved.lexical_dim, resolved.lexical_weight, texts,
            self._prompt_tokenizer.fingerprint(), self._prompt_tokenizer.token_ids, self.vocab_size, self.name,
            statistics,
        )  # fmt: skip

    def fit_lexical_statistics(self, texts: Iterable[str]) -> lexical_channel.LexicalStatistics:
        """Count the lexical channel's statistics (IDF, mean length) on ``texts``, a sample of your
        own corpus, and use them from now on (cached like the built-in ones). Documents embedded
        with other statistics must be embedded again: the identity records their digest."""
        if self.lexical is None:
            raise ValueError("this embedder has no lexical channel (lexical='none'): nothing to fit")
        sample = [t for t in texts]
        if not sample or not all(isinstance(t, str) for t in sample):
            raise ValueError("fit_lexical_statistics needs a non-empty list of strings")
        channel = self._lexical_channel(sample)
        assert channel is not None  # the kind is unchanged
        self.lexical = channel
        self._ranges.forget()  # int8 ranges cover the lexical half: fitted again on next use
        return channel.statistics

    def lexical_rows(
        self, texts: Sequence[str], *, prompt_type: str = "document", sparse: SparseVectors | None = None
    ) -> list[lexical_channel.SparseRow]:
        """Each text's lexical weights (token ids, weights) before the sketch, for ``prompt_type``'s
        side: what ``with_lexical`` sketches. ``sparse``: the texts' sparse vectors from the same
        pass, needed when ``lexical="sparse"``."""
        if self.lexical is None:
            raise ValueError("this embedder has no lexical channel (lexical='none')")
        return self.lexical.text_rows(texts, self.resolved.side(prompt_type), self._prompt_tokenizer.token_ids, sparse)

    def encode_lexical(
        self, texts: str | Iterable[str], *, prompt_type: str = "document", prompt_name: str | None = None
    ) -> SparseVectors:
        """The lexical half's weights as sparse vectors, unsketched: a partner for a store that
        holds sparse vectors (Qdrant). Documents get their unit-length weights, queries their
        IDF-weighted ones, so a sparse store's dot product ranks by the exact lexical cosine; no IDF
        modifier is needed in the store. Needs a lexical channel (``lexical`` other than
        ``"none"``)."""
        if self.lexical is None:
            raise ValueError(
                "encode_lexical needs a lexical channel: build the embedder with lexical='bm25' or 'sparse'"
            )
        name = self.call_options(prompt_type=prompt_type, prompt_name=prompt_name).prompt_type
        items, _ = texts_to_embed(texts, self.config.empty_text)
        sparse = self.encode_sparse(items, prompt_type=name) if self.lexical.kind == "sparse" else None
        rows = self.lexical_rows(items, prompt_type=name, sparse=sparse)
        return self.lexical.sparse_vectors(rows, self.resolved.side(name), self.vocab_size)

    def with_lexical(
        self, dense: np.ndarray, texts: Sequence[str], *, prompt_type: str = "document",
        sparse: SparseVectors | None = None,
    ) -> np.ndarray:  # fmt: skip
        """Final dense vectors (``(len(texts), dense dimension)`` unit rows, post-processed) with
        the texts' lexical half appended: what ``encode`` returns, from dense vectors kept elsewhere
        (an evaluation's cache); ``sparse`` as for ``lexical_rows``."""
        rows = self.lexical_rows(texts, prompt_type=prompt_type, sparse=sparse)
        assert self.lexical is not None  # lexical_rows says so
        return self.lexical.vectors(dense, rows, self.resolved.side(prompt_type))
