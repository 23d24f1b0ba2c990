"""KV re-routing inside transformers' own attention interface.

The model's ``config._attn_implementation`` is switched to ``kv_reroute_<base>`` (base: the
``sdpa`` or ``eager`` implementation it had), registered in transformers' attention-function
and attention-mask registries. With no re-routing plan active, the registered function calls
the base implementation with unchanged arguments, so a plain forward is bit-for-bit the model's
own. Inside [`reroute`][kv_embeddings_integrations.core.method.rerouting.reroute] (a context
variable, so per thread and per asyncio task), each selected layer prepends its final token's
post-rotary key and value to its keys and values, and adds ``bias`` to that prefix column of the
attention logits; every query sees the prefix, and the mask among real tokens is the model's own.

Two exact ways to run a re-routed layer, both in fused kernels:

- merge (SDPA): the model's own attention, in a fused SDPA kernel that also returns each query's
  log-sum-exp ``lse`` (same mask or ``is_causal``); the prefix then joins as one more softmax term:
  ``out = o + sigmoid(s_p - lse) * (v_p - o)`` with ``s_p = q.k_p * scale + bias``. Extra work is
  O(L * head_dim) per head, nothing quadratic. Which kernel runs is the plan's
  [`KernelTable`][kv_embeddings_integrations.core.method.kernels.KernelTable]'s choice
  ([`kernels`][kv_embeddings_integrations.core.method.kernels]).
- concatenation (elsewhere: eager attention, soft-capping, kernels torch refuses): keys and values
  get the prefix row and the mask a prefix column, then the base implementation runs.

Inputs must be left padded, so the final real token of every row is at position -1; or packed
(several sequences in one row, ``position_ids`` restarting at each, no attention mask, so
transformers builds the block-diagonal causal mask), with ``segment_ends`` giving each position's
own sequence's final token: every sequence then gets its own final key and value as its prefix and
sees no other sequence's tokens ([`packing`][kv_embeddings_integrations.core.running.packing]).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .kernels import KernelTable, active_kernels, additive_body, additive_mask, prefixed_mask

PREFIX = "kv_reroute_"
SUPPORTED_BASES = ("sdpa", "eager")

# transformers' attention interface: (module, query, key, value, mask, **kwargs) -> (output, weights or None).
AttentionFunction = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class ReroutePlan:
    """Which layers re-route, with what bias, through which kernels; ``kernels`` records the layers
    that actually did, and how."""

    layers: frozenset[int]
    bias: float
    # Packed rows: (batch, length) index of each position's sequence's final token; None: the last.
    segment_ends: torch.Tensor | None = None
    # layer -> how it ran: "cpu_flash", "flash", "efficient", "cudnn" (log-sum-exp merge) or "concat".
    kernels: dict[int, str] = field(default_factory=dict)
    # Taken when the plan starts, so one forward runs one table whatever use_kernels does meanwhile.
    kernel_table: KernelTable = field(default_factory=active_kernels, repr=False)

    @property
    def hits(self) -> set[int]:
        """The layers that were re-routed."""
        return set(self.kernels)


_ACTIVE_PLAN: ContextVar[ReroutePlan | None] = ContextVar("kv_reroute_plan", default=None)
# Where observe_plans() collects the plans of this context's forwards, if anywhere.
_OBSERVED: ContextVar[list[ReroutePlan] | None] = ContextVar("kv_reroute_observed", default=None)


class UnsupportedModelError(TypeError):
    """The model cannot be re-routed through transformers' attention interface."""


def _eager_function(module: torch.nn.Module) -> AttentionFunction:
    # Each modeling file defines its own eager function (Gemma's adds soft-capping), not registered.
    function: AttentionFunction | None = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if function is None:
        raise UnsupportedModelError(
            f"{type(module).__name__} has no eager_attention_forward in its modeling module; "
            "KV re-routing cannot run it with eager attention. Load the model with attn_implementation='sdpa'."
        )
    return function


def _base_function(base: str, module: torch.nn.Module) -> AttentionFunction:
    return sdpa_attention_forward if base == "sdpa" else _eager_function(module)


def kv_reroute_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    base: str,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention function registered as ``kv_reroute_<base>``; see the module docstring."""
    plan = _ACTIVE_PLAN.get()
    layer = getattr(module, "layer_idx", None)
    function = _base_function(base, module)
    if plan is None or layer not in plan.layers:
        return function(module, query, key, value, attention_mask, **kwargs)
    if base == "sdpa" and _can_merge(plan.kernel_table, query, key, kwargs):
        merged = _merged_prefix_sdpa(
            plan.kernel_table, module, query, key, value, attention_mask, plan.bias, plan.segment_ends, **kwargs
        )
        if merged is not None:
            plan.kernels[layer] = merged[1]
            return merged[0], None
    plan.kernels[layer] = "concat"
    if plan.segment_ends is not None:
        return _packed_concat(function, module, query, key, value, attention_mask, plan, **kwargs)
    # method.md step 2/4: the final token's key (with its own rotary rotation) and value, as a prefix.
    key = torch.cat([key[:, :, -1:], key], dim=2)
    value = torch.cat([value[:, :, -1:], value], dim=2)
    mask = prefixed_mask(
        attention_mask, query.shape[0], query.shape[2], key.shape[2] - 1, plan.bias, query.dtype, query.device
    )
    kwargs.pop("is_causal", None)
    return function(module, query, key, value, mask, **kwargs)


# Arguments of transformers' SDPA path that the merge cannot honour (it then concatenates).
_MERGE_UNSUPPORTED = ("position_bias", "softcap", "s_aux", "sinks")


def _can_merge(table: KernelTable, query: torch.Tensor, key: torch.Tensor, kwargs: dict[str, Any]) -> bool:
    return (
        table.serves(query)
        and query.shape[2] == key.shape[2]
        and not kwargs.get("dropout")
        and not kwargs.get("output_attentions")
        and all(kwargs.get(name) is None for name in _MERGE_UNSUPPORTED)
    )


def _merged_prefix_sdpa(
    table: KernelTable,
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    bias: float,
    segment_ends: torch.Tensor | None,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **_: object,
) -> tuple[torch.Tensor, str] | None:
    """The re-routed layer by log-sum-exp merge (module docstring): ``(attention output, kernel)``,
    or None where no fused kernel with a log-sum-exp takes these tensors (then: concatenation)."""
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    scale = scaling if scaling is not None else dim**-0.5
    # The model's own choice, as transformers' sdpa_attention_forward makes it.
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(length > 1 and attention_mask is None and causal)
    fused = table.attention_with_lse(query, key, value, additive_mask(attention_mask, query.dtype), causal, scale)
    if fused is None:
        return None
    out, lse, kernel = fused
    if segment_ends is not None:
        return _merge_per_segment(query, key, value, out, lse, segment_ends, scale, bias), kernel
    # method.md step 2/4: the final token's key (with its own rotary rotation) and value, for the
    # query heads of each key/value head: (batch, kv_heads, groups * length, dim).
    grouped = query.reshape(batch, kv_heads, -1, dim).float()
    score_p = (grouped @ key[:, :, -1:].float().transpose(-1, -2)).view(batch, heads, length) * scale + bias
    weight_p = torch.sigmoid(score_p - lse).view(batch, kv_heads, -1, length, 1)
    merged = torch.lerp(out.float().reshape(batch, kv_heads, -1, length, dim), value[:, :, None, -1:].float(), weight_p)
    return merged.view(batch, heads, length, dim).to(query.dtype).transpose(1, 2).contiguous(), kernel


def _segment_prefix(tensor: torch.Tensor, segment_ends: torch.Tensor) -> torch.Tensor:
    """``(batch, kv_heads, length, dim)``: at each position, the key (or value) of its sequence's final token."""
    index = segment_ends.to(tensor.device)[:, None, :, None].expand(*tensor.shape[:2], -1, tensor.shape[-1])
    return tensor.gather(2, index)


def _merge_per_segment(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    segment_ends: torch.Tensor,
    scale: float,
    bias: float,
) -> torch.Tensor:
    """The log-sum-exp merge of packed rows: each query's prefix is its own sequence's final key and value."""
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    key_p = _segment_prefix(key, segment_ends).float()[:, :, None]  # (batch, kv_heads, 1, length, dim)
    value_p = _segment_prefix(value, segment_ends).float()[:, :, None]
    grouped = query.reshape(batch, kv_heads, -1, length, dim).float()
    score_p = (grouped * key_p).sum(-1) * scale + bias  # (batch, kv_heads, groups, length)
    weight_p = torch.sigmoid(score_p - lse.reshape(batch, kv_heads, -1, length))[..., None]
    merged = torch.lerp(out.float().reshape(batch, kv_heads, -1, length, dim), value_p, weight_p)
    return merged.view(batch, heads, length, dim).to(query.dtype).transpose(1, 2).contiguous()


def _packed_concat(
    function: AttentionFunction,
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    plan: ReroutePlan,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenation for packed rows: one prefix column per position (its sequence's final key and
    value), which only that position's query sees (with ``bias``); the model's own block-diagonal
    mask among real tokens. Quadratic like the eager attention it serves."""
    assert plan.segment_ends is not None
    length = key.shape[2]
    key = torch.cat([_segment_prefix(key, plan.segment_ends), key], dim=2)
    value = torch.cat([_segment_prefix(value, plan.segment_ends), value], dim=2)
    body = additive_body(attention_mask, query.shape[2], length, query.dtype, query.device)
    own = torch.eye(query.shape[2], length, dtype=torch.bool, device=query.device)
    prefix = torch.full(own.shape, torch.finfo(query.dtype).min, dtype=query.dtype, device=query.device)
    prefix = prefix.masked_fill(own, plan.bias).expand(*body.shape[:-2], -1, -1)
    kwargs.pop("is_causal", None)
    return function(module, query, key, value, torch.cat([prefix, body], dim=-1), **kwargs)


for _base, _mask in (("sdpa", sdpa_mask), ("eager", eager_mask)):
    ALL_ATTENTION_FUNCTIONS.register(PREFIX + _base, partial(kv_reroute_attention, base=_base))
    ALL_MASK_ATTENTION_FUNCTIONS.register(PREFIX + _base, _mask)


def _configs(model: PreTrainedModel) -> list[PreTrainedConfig]:
    seen: list[PreTrainedConfig] = []
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation") and all(config is not c for c in seen):
            seen.append(config)
    return seen


def install(model: PreTrainedModel) -> str:
    """Route ``model``'s attention through
    [`kv_reroute_attention`][kv_embeddings_integrations.core.method.rerouting.kv_reroute_attention];
    returns the base used.

    Idempotent; a plain forward afterwards is unchanged (no plan is active).
    """
    if not getattr(model, "_supports_attention_backend", False):
        raise UnsupportedModelError(
            f"{type(model).__name__} does not use transformers' attention interface, so KV re-routing "
            "cannot be hooked into it. Use method='prompt' (no re-routing) or a supported decoder "
            "(Llama, Mistral, Qwen2/3, Gemma 2/3, ...)."
        )
    current: str = model.config._attn_implementation
    base = current.removeprefix(PREFIX)
    if base not in SUPPORTED_BASES:
        raise UnsupportedModelError(
            f"KV re-routing needs attn_implementation in {SUPPORTED_BASES}; {type(model).__name__} was loaded "
            f"with {current!r}. Load it with attn_implementation='sdpa'."
        )
    for config in _configs(model):
        config._attn_implementation = PREFIX + base
    return base


@contextlib.contextmanager
def reroute(
    model: PreTrainedModel, layers: list[int], bias: float, segment_ends: torch.Tensor | None = None
) -> Iterator[ReroutePlan]:
    """Re-route ``layers`` for forwards run inside this block; checks that each selected layer did.
    ``segment_ends``: for packed rows, each position's sequence's final token
    ([`packed_positions`][kv_embeddings_integrations.core.running.packing.packed_positions]).
    The forwards run the kernels of
    [`active_kernels`][kv_embeddings_integrations.core.method.kernels.active_kernels] at entry."""
    plan = ReroutePlan(frozenset(layers), float(bias), segment_ends)
    observed = _OBSERVED.get()
    if observed is not None:
        observed.append(plan)
    token = _ACTIVE_PLAN.set(plan)
    try:
        yield plan
    finally:
        _ACTIVE_PLAN.reset(token)
    missed = sorted(plan.layers - plan.hits)
    if missed:
        raise UnsupportedModelError(
            f"{type(model).__name__}: layers {missed} never called transformers' attention interface with a "
            "layer_idx, so they could not be re-routed (the model's attention code does not use the standard "
            "interface). Refusing to return embeddings from a plain forward."
        )


@contextlib.contextmanager
def observe_plans() -> Iterator[list[ReroutePlan]]:
    """Collect the plans of the re-routed forwards run inside this block, in this thread or task
    (each plan's ``kernels`` says how every re-routed layer ran); for tests and benchmarks."""
    plans: list[ReroutePlan] = []
    token = _OBSERVED.set(plans)
    try:
        yield plans
    finally:
        _OBSERVED.reset(token)
