"""What the embedder fits on before it exists: its model and method, and a plain runner.

The layers are chosen, and the post-processing fitted, while the embedder is being built. Both
embed, so they run on a [`Fitting`][kv_embeddings_integrations.core.fitting.subject.Fitting]: the
model, the resolved method and a runner over it, never on a half-built embedder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import EmbedderConfig
from ..outputs.lexical import LexicalChannel
from ..resolved import ResolvedMethod
from ..running.inputs import texts_to_embed
from ..running.runner import BatchRunner


@dataclass(frozen=True)
class Fitting:
    """A fit's subject ([`FitSubject`][kv_embeddings_integrations.core.identity.FitSubject]) that
    embeds through its own runner.

    Attributes:
        name: the model's name, for messages.
        config: the embedder's options.
        resolved: its resolved method.
        runner: the forward passes, re-routing the layers chosen so far
            (``layers``).
        batch_size: rows per batch (``None``: bounded by the token budget only).
        chunk: most texts tokenized at once.
    """

    name: str
    config: EmbedderConfig
    resolved: ResolvedMethod
    runner: BatchRunner
    batch_size: int | None
    chunk: int
    lexical: LexicalChannel | None = field(default=None, init=False)

    @property
    def model(self) -> torch.nn.Module:
        return self.runner.model

    @property
    def num_layers(self) -> int:
        return self.runner.num_layers

    @property
    def layers(self) -> Sequence[int]:
        return self.runner.plan.layers

    def layer_states(
        self, texts: Sequence[str], *, prompt_type: str = "document", show_progress_bar: bool | None = None
    ) -> torch.Tensor:
        """Every layer's last-token state of each prompted text, without re-routing (what layer
        selection measures); ``(len(texts), num_layers, hidden_size)`` float32."""
        encoded = self.runner.prompt_tokenizer.encode(list(texts), self.resolved.templates(prompt_type)[0])
        return self.runner.layer_states(encoded, self.batch_size, show_progress_bar, [])

    def unit_vectors(self, texts: list[str]) -> np.ndarray:
        """The texts' unit vectors with the document prompt (its templates averaged), before any
        post-processing or lexical half: what the post-processing is fitted on."""
        items, _ = texts_to_embed(texts, self.config.empty_text)
        templates = self.resolved.templates("document")
        result = self.runner.run_templates(items, templates, self.batch_size, None, False, self.chunk)
        return torch.nn.functional.normalize(torch.from_numpy(result.vectors), dim=-1).numpy()
