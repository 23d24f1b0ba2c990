"""A causal LM as the method runs it: its resolved method, its prompts, tokens, batches and
forward passes, before anything is fitted or any output is made of them.

[`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder] builds on
[`PromptedModel`][kv_embeddings_integrations.core.running.prompted_model.PromptedModel]: the facade
adds the fits, the outputs and the concurrent calls; this level holds what they all run on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import BaseModelOutputWithPast

from ..config import EmbedderConfig
from ..method import rerouting, token_prepending
from ..model.loading import LoadOptions
from ..outputs import fusion
from ..outputs import sparse as sparse_vectors
from ..prompts import FAMILIES, PromptFamily
from ..resolved import ResolvedMethod
from .forward import ForwardPlan, decoder_of
from .runner import DEFAULT_BATCH_SIZE, BatchRunner
from .tokenization import EncodedText, PromptTokenizer, TokenBatch


class PromptedModel:
    """A loaded causal LM with its options resolved: prompts, tokens, batches, forward passes.

    Args:
        model: a transformers ``PreTrainedModel`` (a ``*ForCausalLM`` or its base ``*Model``).
        tokenizer: its fast tokenizer.
        config: the options, already merged.
        name: how to name the model in messages and caches (defaults to its ``name_or_path``).
        load_options: how the model was loaded, if it was loaded by name.

    ``runner`` re-routes nothing until the layers are chosen (the facade then gives it a plan
    that does).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: EmbedderConfig,
        *,
        name: str | None = None,
        load_options: LoadOptions | None = None,
    ) -> None:
        if not isinstance(model, PreTrainedModel):
            raise TypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}")
        self.config = config
        self.model = model.eval()
        self.decoder = decoder_of(model)
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
        self.runner = self.runner_for(())

    def runner_for(self, layers: tuple[int, ...]) -> BatchRunner:
        """A runner of this model's passes re-routing ``layers`` (one per process: it holds a lock)."""
        resolved = self.resolved
        plan = ForwardPlan(layers, resolved.bias, resolved.prepend_layers, self.config.batching == "packed")
        return BatchRunner(
            self.model,
            self.decoder,
            self._prompt_tokenizer,
            plan,
            self._pad_token_id,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            output_layer=resolved.output_layer,
            pooling=resolved.pooling,
            mean_scope=resolved.mean_scope,
            max_length=resolved.max_length,
            max_tokens_per_batch=self.config.max_tokens_per_batch,
            chunk_mean=resolved.long_text == "chunk_mean",
        )

    @property
    def layers(self) -> list[int]:
        """The re-routed layers: the runner's plan, so what is recorded is what runs."""
        return list(self.runner.plan.layers)

    @layers.setter
    def layers(self, layers: Sequence[int]) -> None:
        if layers:
            rerouting.install(self.model)  # idempotent
        self.runner = self.runner.with_plan(dataclasses.replace(self.runner.plan, layers=tuple(layers)))

    def __getstate__(self) -> dict[str, Any]:
        # The runner holds a lock, and belongs to this process: only its layers travel.
        state = {k: v for k, v in self.__dict__.items() if k != "runner"}
        return {**state, "_layers": tuple(self.runner.plan.layers)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        layers = state.pop("_layers")
        self.__dict__.update(state)
        self.runner = self.runner_for(layers)

    # What the method resolved to (see ResolvedMethod), under the names front ends use.

    @property
    def family(self) -> PromptFamily:
        """The prompt family: the config's ``prompt_family``, else the method's."""
        return FAMILIES[self.resolved.family]

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
    def batch_size(self) -> int | None:
        """Rows per batch: the config's, else 32, or unbounded under a token budget."""
        if self.config.batch_size is None and self.config.max_tokens_per_batch is None:
            return DEFAULT_BATCH_SIZE
        return self.config.batch_size

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embeddings."""
        return self.runner.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights."""
        dtype: torch.dtype = next(self.model.parameters()).dtype
        return dtype

    @property
    def vocab_size(self) -> int:
        """Rows of the LM head: the width of the sparse vectors."""
        return self.runner.vocab_size

    def templates(self, prompt_type: str = "document") -> tuple[str, ...]:
        """The prompt templates used for ``prompt_type`` (one of ``prompt_names``): the user's
        override, else the family's (MetaEOL has several: each text is embedded with each, and the
        vectors averaged); a symmetric task's queries get the document ones. An unknown name is a
        ``ValueError``."""
        return self.resolved.templates(prompt_type)

    @property
    def prompt_names(self) -> tuple[str, ...]:
        """Every name ``prompt_type`` / ``prompt_name`` takes: the config's own prompts, then
        ``document``, ``query`` and the other providers' names for them (Cohere's ``search_query``,
        NVIDIA's ``passage``, Jina's ``retrieval.query``...)."""
        return self.resolved.prompt_names

    def template(self, prompt_type: str = "document") -> str:
        """The (first) prompt template used for ``prompt_type``; layer selection measures this one."""
        return self.templates(prompt_type)[0]

    def splices(self, prompt_type: str = "document") -> bool:
        """Whether token ids given as input (a
        [`TokenIds`][kv_embeddings_integrations.core.running.inputs.TokenIds]) are embedded exactly
        as given with ``prompt_type``'s templates: each of them splits
        ([`PromptTokenizer.splits`][kv_embeddings_integrations.core.running.tokenization.PromptTokenizer.splits]).
        Where one does not, a ``TokenIds`` is embedded with it as its text (the ids decoded)."""
        return all(self._prompt_tokenizer.splits(t) for t in self.templates(prompt_type))

    # -- tokens, batches, forward passes -----------------------------------------------------------

    def tokenize(
        self, texts: Sequence[str], prompt_type: str = "document", *, template: str | None = None
    ) -> list[EncodedText]:
        """The prompted token ids of each text as the model sees them (cut to ``max_length``), with
        ``prompt_type``'s (first) template or the given one of ``templates``."""
        return self._prompt_tokenizer.encode(list(texts), template or self.template(prompt_type))

    def tokenize_strings(self, strings: Sequence[str], *, add_special_tokens: bool = True) -> BatchEncoding:
        """The tokenizer's output for whole strings (no prompt, no cut): ids, character offsets and
        the special-token mask; safe beside embedding calls in other threads."""
        return self._prompt_tokenizer.tokenize_strings(list(strings), add_special_tokens)

    def collate(self, encoded: Sequence[EncodedText]) -> TokenBatch:
        """Left-pad tokenized texts into one batch on the model's input device."""
        return self.runner.collate(list(encoded))

    def forward(
        self, batch: TokenBatch, *, output_hidden_states: bool = False, layers: list[int] | None = None
    ) -> BaseModelOutputWithPast:
        """One forward pass of the decoder, re-routing ``layers`` (default: the selected ones;
        ``[]``: none): the runner's
        [`model_forward`][kv_embeddings_integrations.core.running.runner.BatchRunner.model_forward].

        Returns:
            the decoder's output (``last_hidden_state``, and ``hidden_states`` if asked).
        """
        return self.runner.model_forward(batch, output_hidden_states=output_hidden_states, layers=layers)

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
            a ``(len(texts), num_layers, hidden_size)`` float32 CPU tensor, whose entry ``l`` on the
            second axis is layer ``l``'s output (the last one after the final norm). All layers come
            from one pass per batch.
        """
        encoded = self.tokenize(texts, prompt_type)
        return self.runner.layer_states(encoded, self.batch_size, show_progress_bar, None if reroute else [])

    def _lm_head(self) -> torch.Tensor:
        return sparse_vectors.lm_head_weight(self.model)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix between two sets of vectors (any normalisation)."""
        return fusion.cosine_scores(a, b)
