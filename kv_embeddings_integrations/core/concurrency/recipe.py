"""What another process needs to rebuild an embedder (data-parallel workers, Ray actors)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel

from ..call_options import CallOptions
from ..config import EmbedderConfig
from ..fitting.postprocessing import PostProcessor
from ..outputs.lexical import LexicalStatistics
from ..results import EmbedResult


class Replica(Protocol):
    """What a worker needs of the embedder it rebuilt (a
    [`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder] is one)."""

    @property
    def model(self) -> torch.nn.Module: ...
    @property
    def layers(self) -> Sequence[int]: ...
    def embed_with(self, texts: Sequence[str], options: CallOptions) -> EmbedResult: ...


@dataclasses.dataclass
class EmbedderRecipe:
    """What another process needs to rebuild an embedder, with its layers already chosen.

    Sent to data-parallel workers and similar instead of the embedder itself, so nothing else it
    holds (a request queue, locks) has to pickle, and no worker re-runs layer selection.

    Attributes:
        embedder_class: the class to rebuild ([`KVEmbedder`][kv_embeddings_integrations.core.embedder.KVEmbedder]
            or a subclass); a class pickles by name, so this module needs no import of it.
        model: the loaded causal LM.
        tokenizer: its tokenizer.
        config: the embedder's options.
        name: the model's name, for messages and the identity record.
        layers: the re-routed layers, already selected.
        postprocessor: the fitted post-processing, if any.
        lexical_statistics: the lexical channel's statistics, if it has one (fitted on the user's
            texts, they are not the config's to count again).
    """

    embedder_class: Callable[..., Replica]
    model: PreTrainedModel
    tokenizer: Any
    config: EmbedderConfig
    name: str
    layers: list[int]
    postprocessor: PostProcessor | None = None
    lexical_statistics: LexicalStatistics | None = None

    def build(self) -> Replica:
        """The embedder, re-routing exactly ``layers``, with the fitted post-processing."""
        # An empty list is not a valid `layers` option; None means "no re-routing", which is what
        # an empty selection means too (or the method does not re-route and ignores it anyway).
        embedder = self.embedder_class(
            self.model,
            self.tokenizer,
            self.config,
            name=self.name,
            postprocessor=self.postprocessor,
            lexical_statistics=self.lexical_statistics,
            layers=self.layers or None,
        )
        if list(embedder.layers) != self.layers:
            raise RuntimeError(f"the rebuilt embedder re-routes layers {embedder.layers}, not {self.layers}")
        return embedder
