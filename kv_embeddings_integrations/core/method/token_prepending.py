"""Token Prepending (Fu et al. 2024, arXiv 2412.11556), through forward pre-hooks on the decoder layers.

A placeholder token sits just before the text (``This sentence : <PST> "{text}" ...``). Entering
each of the early layers ``start .. stop - 1``, its hidden state is overwritten with the last
token's state at that point (the previous layer's sentence summary), so the text's tokens, which
causal attention keeps from seeing the end, can attend to it. The official code
(github.com/fuyuchenIfyw/token_prepending) does this before 0-based layers 1..6 of LLaMA-2-7B's 32
and pools the output of layer 26 (``hidden_states[27]``, no final norm); both are scaled to the
model's depth here.

Unlike that code, no token is added to the vocabulary (which would resize the model's
embeddings): the placeholder is an existing token id (the tokenizer's pad, else eos or unk). Its
input embedding only reaches layer 0, as the random one there does.

The hooks are installed once and do nothing unless
[`prepend`][kv_embeddings_integrations.core.method.token_prepending.prepend] is active (a context
variable, so per thread and per asyncio task), so a plain forward is the model's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# The official setting for 32 layers: replace before layers 1..6, pool layer 26's output.
REFERENCE_DEPTH = 32
REFERENCE_STOP = 7
REFERENCE_OUTPUT = 26


@dataclass(frozen=True)
class PrependPlan:
    """Rows' placeholder positions and the layers (``start <= l < stop``) whose input is rewritten."""

    positions: torch.Tensor
    start: int
    stop: int


_ACTIVE: ContextVar[PrependPlan | None] = ContextVar("token_prepending_plan", default=None)
_HOOKED = "_kv_token_prepending_hooked"


def scaled_layers(num_layers: int) -> tuple[int, int]:
    """``(start, stop)``: rewrite the placeholder entering layers ``start .. stop - 1``, scaled from
    the official 1..6 of 32 (at least one layer)."""
    stop = max(2, round(REFERENCE_STOP * num_layers / REFERENCE_DEPTH))
    return 1, min(stop, num_layers)


def scaled_output_layer(num_layers: int) -> int:
    """The 0-based layer whose output is pooled, scaled from the official 26 of 32."""
    return min(num_layers - 1, max(0, round((REFERENCE_OUTPUT + 1) * num_layers / REFERENCE_DEPTH) - 1))


def placeholder_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token id used as the placeholder."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("Token Prepending needs a pad, eos or unk token id for its placeholder; the tokenizer has none")


def decoder_layers(decoder: torch.nn.Module) -> torch.nn.ModuleList:
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise TypeError(
            f"{type(decoder).__name__} has no `layers` ModuleList of decoder layers, so Token Prepending "
            "cannot hook into it"
        )
    return layers


# A forward pre-hook with kwargs: (module, args, kwargs) -> new (args, kwargs), or None to keep them.
PreHook = Callable[[torch.nn.Module, tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]] | None]


def _pre_hook(index: int) -> PreHook:
    def hook(
        module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        plan = _ACTIVE.get()
        if plan is None or not plan.start <= index < plan.stop:
            return None
        if args:
            hidden, args = args[0], args[1:]
        else:
            hidden = kwargs["hidden_states"]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        hidden = hidden.clone()  # the previous layer's output is also a returned hidden state
        hidden[rows, plan.positions.to(hidden.device)] = hidden[:, -1].clone()
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": hidden}
        return (hidden, *args), kwargs

    return hook


def install(decoder: torch.nn.Module) -> None:
    """Hook every decoder layer of ``decoder`` (idempotent; inert outside
    [`prepend`][kv_embeddings_integrations.core.method.token_prepending.prepend])."""
    if getattr(decoder, _HOOKED, False):
        return
    for index, layer in enumerate(decoder_layers(decoder)):
        layer.register_forward_pre_hook(_pre_hook(index), with_kwargs=True)
    setattr(decoder, _HOOKED, True)


@contextlib.contextmanager
def prepend(positions: torch.Tensor, start: int, stop: int) -> Iterator[PrependPlan]:
    """Token Prepending for forwards run inside this block; ``positions``: each row's placeholder."""
    plan = PrependPlan(positions, start, stop)
    token = _ACTIVE.set(plan)
    try:
        yield plan
    finally:
        _ACTIVE.reset(token)
