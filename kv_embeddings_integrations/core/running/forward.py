"""One decoder pass as the method runs it: the selected layers re-routed, Token Prepending's
placeholder rewritten, a packed batch unpacked.

[`ForwardPlan`][kv_embeddings_integrations.core.running.forward.ForwardPlan] is what decides the
pass beyond the model and the tokens; the runner holds one and calls
[`decoder_forward`][kv_embeddings_integrations.core.running.forward.decoder_forward], so nothing
here reads the embedder above it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import cast

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast

from ..method import rerouting, token_prepending
from .packing import packed_forward
from .tokenization import TokenBatch


@dataclass(frozen=True)
class ForwardPlan:
    """What a pass does besides running the decoder.

    Attributes:
        layers: the re-routed layers (empty: a plain pass).
        bias: the attention bias on the re-routed prefix.
        prepend_layers: ``(start, stop)``, the layers whose input placeholder Token Prepending
            rewrites, or ``None`` when it is off.
        packed: pack a batch's texts into shared rows (``batching="packed"``).
    """

    layers: tuple[int, ...] = ()
    bias: float = 0.0
    prepend_layers: tuple[int, int] | None = None
    packed: bool = False


def decoder_of(model: PreTrainedModel) -> PreTrainedModel:
    """The decoder stack of a ``*ForCausalLM`` (its base model), or the model itself."""
    get_decoder = getattr(model, "get_decoder", None)
    return cast(PreTrainedModel, (get_decoder() if get_decoder is not None else None) or model)


def decoder_forward(
    model: PreTrainedModel,
    decoder: PreTrainedModel,
    plan: ForwardPlan,
    batch: TokenBatch,
    pad_token_id: int,
    *,
    output_hidden_states: bool = False,
    layers: list[int] | None = None,
) -> BaseModelOutputWithPast:
    """One pass of ``decoder`` over ``batch`` as ``plan`` says, re-routing ``layers`` (default:
    the plan's; ``[]``: none).

    Args:
        model: the loaded model (its attention is what re-routing hooks).
        decoder: its decoder stack.
        plan: the re-routing, Token Prepending and packing of the pass.
        batch: the padded batch, on the model's input device.
        pad_token_id: fills the unused tail of a packed row.
        output_hidden_states: also return every layer's states.
        layers: the layers to re-route instead of the plan's.

    Returns:
        the decoder's output (``last_hidden_state``, and ``hidden_states`` if asked).
    """
    routed = list(plan.layers) if layers is None else layers
    if plan.packed and batch.input_ids.shape[0] > 1:
        return packed_forward(model, decoder, batch, output_hidden_states, routed, plan.bias, pad_token_id)
    routing = rerouting.reroute(model, routed, plan.bias) if routed else contextlib.nullcontext()
    prepending: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if batch.marker_index is not None and plan.prepend_layers is not None:
        prepending = token_prepending.prepend(batch.marker_index, *plan.prepend_layers)
    with torch.inference_mode(), routing, prepending:
        out: BaseModelOutputWithPast = decoder(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            output_hidden_states=output_hidden_states,
        )
    return out
