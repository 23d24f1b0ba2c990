"""KV re-routing inside transformers' own attention interface.

The model's ``config._attn_implementation`` is switched to ``kv_reroute_<base>`` (base: the
``sdpa`` or ``eager`` implementation it had), registered in transformers' attention-function
and attention-mask registries. With no re-routing plan active, the registered function calls
the base implementation with unchanged arguments, so a plain forward is bit-for-bit the model's
own. Inside :func:`reroute` (a context variable, so per thread and per asyncio task), each
selected layer prepends its final token's post-rotary key and value to its keys and values, and
adds ``bias`` to that prefix column of the attention logits; every query sees the prefix, and the
mask among real tokens is the model's own.

Two exact ways to run a re-routed layer, both in fused kernels:

- merge (SDPA): the model's own attention, in a fused SDPA kernel that also returns each query's
  log-sum-exp ``lse`` (same mask or ``is_causal``); the prefix then joins as one more softmax term:
  ``out = o + sigmoid(s_p - lse) * (v_p - o)`` with ``s_p = q.k_p * scale + bias``. Extra work is
  O(L * head_dim) per head, nothing quadratic. Kernels: the CPU flash kernel; on CUDA the one
  SDPA itself picks for these tensors (cuDNN, flash or memory-efficient: what the plain layers
  run), else the memory-efficient kernel where torch's checks allow it.
- concatenation (elsewhere: eager attention, soft-capping, kernels torch refuses): keys and values
  get the prefix row and the mask a prefix column, then the base implementation runs.

Inputs must be left padded, so the final real token of every row is at position -1; or packed
(several sequences in one row, ``position_ids`` restarting at each, no attention mask, so
transformers builds the block-diagonal causal mask), with ``segment_ends`` giving each position's
own sequence's final token: every sequence then gets its own final key and value as its prefix and
sees no other sequence's tokens (:mod:`~kv_embeddings_integrations.core.running.packing`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any

import torch
from torch.nn.attention import SDPBackend
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

PREFIX = "kv_reroute_"
SUPPORTED_BASES = ("sdpa", "eager")

# transformers' attention interface: (module, query, key, value, mask, **kwargs) -> (output, weights or None).
AttentionFunction = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class ReroutePlan:
    """Which layers re-route, with what bias; ``kernels`` records the layers that actually did, and how."""

    layers: frozenset[int]
    bias: float
    # Packed rows: (batch, length) index of each position's sequence's final token; None: the last.
    segment_ends: torch.Tensor | None = None
    # layer -> how it ran: "cpu_flash", "flash", "efficient", "cudnn" (log-sum-exp merge) or "concat".
    kernels: dict[int, str] = field(default_factory=dict)

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


def prefixed_mask(
    attention_mask: torch.Tensor | None,
    batch: int,
    q_len: int,
    kv_len: int,
    bias: float,
    dtype: torch.dtype,
    device: torch.device | str,
) -> torch.Tensor:
    """Additive mask ``(batch|1, 1, q_len, 1 + kv_len)``: column 0 (the prefix) holds ``bias``
    for every query; the rest is the model's own mask (causal when it passed none)."""
    body = _additive_body(attention_mask, q_len, kv_len, dtype, device)
    prefix = torch.full((*body.shape[:-1], 1), bias, dtype=dtype, device=device)
    return torch.cat([prefix, body], dim=-1)


def _additive_body(
    attention_mask: torch.Tensor | None, q_len: int, kv_len: int, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """The model's own mask among the real keys, additive ``(batch|1, 1, q_len, kv_len)`` (causal
    when it passed none)."""
    min_value = torch.finfo(dtype).min
    if attention_mask is None:
        allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(diagonal=kv_len - q_len)
        body = torch.zeros((1, 1, q_len, kv_len), dtype=dtype, device=device).masked_fill(~allowed, min_value)
    elif attention_mask.dtype == torch.bool:
        mask = attention_mask[..., :kv_len]
        body = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask.to(device), min_value)
    else:
        body = attention_mask[..., :kv_len].to(device=device, dtype=dtype)
    return body


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
    if base == "sdpa" and _can_merge(query, key, kwargs):
        merged = _merged_prefix_sdpa(
            module, query, key, value, attention_mask, plan.bias, segment_ends=plan.segment_ends, **kwargs
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


# SDPA's fused kernels, called directly for their log-sum-exp (the public function drops it).
_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_CUDA_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention", None)
_CUDA_EFFICIENT = getattr(torch.ops.aten, "_scaled_dot_product_efficient_attention", None)
_CUDA_CUDNN = getattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention", None)
# The memory-efficient kernel reads its bias in rows aligned to this many elements (torch's SDPA
# pads the mask the same way before calling it).
_BIAS_ALIGNMENT = 16


def _kernel_device(tensor: torch.Tensor) -> str:
    """Which set of fused kernels serves ``tensor``: "cpu" or "cuda" (others: none)."""
    return tensor.device.type


def _can_merge(query: torch.Tensor, key: torch.Tensor, kwargs: dict[str, Any]) -> bool:
    device = _kernel_device(query)
    return (
        ((device == "cpu" and _CPU_FLASH is not None) or (device == "cuda" and _CUDA_EFFICIENT is not None))
        and query.shape[2] == key.shape[2]
        and not kwargs.get("dropout")
        and not kwargs.get("output_attentions")
        and all(kwargs.get(name) is None for name in _MERGE_UNSUPPORTED)
    )


@cache
def _kernel_takes_grouped_heads(kernel: str = "cpu_flash", device: str = "cpu") -> bool:
    """Whether ``kernel`` maps query heads onto fewer key/value heads itself (tried once per device)."""
    half = torch.bfloat16 if device != "cpu" else torch.float32
    query, key = torch.zeros(1, 2, 1, 8, dtype=half, device=device), torch.zeros(1, 1, 1, 8, dtype=half, device=device)
    try:
        if kernel == "cpu_flash" and _CPU_FLASH is not None:
            _CPU_FLASH(query, key, key, 0.0, False)
        elif kernel == "flash" and _CUDA_FLASH is not None:
            _CUDA_FLASH(query, key, key, 0.0, False, False)
        elif kernel == "cudnn" and _CUDA_CUDNN is not None:
            _CUDA_CUDNN(query, key, key, None, True, 0.0, False, False)
        else:
            return False  # the memory-efficient kernel wants one key/value head per query head
    except RuntimeError:
        return False
    return True


_CHECKS = {
    "flash": torch.backends.cuda.can_use_flash_attention,
    "efficient": torch.backends.cuda.can_use_efficient_attention,
    "cudnn": getattr(torch.backends.cuda, "can_use_cudnn_attention", lambda params, debug=False: False),
}
_BACKENDS = {
    int(SDPBackend.FLASH_ATTENTION.value): "flash",
    int(SDPBackend.EFFICIENT_ATTENTION.value): "efficient",
    int(SDPBackend.CUDNN_ATTENTION.value): "cudnn",
}


def _sdpa_allows(
    kernel: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, causal: bool
) -> bool:
    """torch's own SDPA checks (dtype, head size, alignment, GPU) for ``kernel`` on these tensors."""
    grouped = key.shape[1] != query.shape[1]
    params = torch.backends.cuda.SDPAParams(query, key, value, mask, 0.0, causal, grouped)
    return bool(_CHECKS[kernel](params))


def _sdpa_choice(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, causal: bool
) -> str:
    """The fused kernel SDPA would run for these tensors ("flash", "efficient" or "cudnn"; else "")."""
    grouped = key.shape[1] != query.shape[1]
    choice = torch._fused_sdp_choice(query, key, value, mask, 0.0, causal, enable_gqa=grouped)
    return _BACKENDS.get(int(choice), "")


def _additive_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The kernels take additive masks. A finite minimum (not -inf) keeps fully masked rows (left
    padding) finite; SDPA converts boolean masks the same way for every layer."""
    if attention_mask is None:
        return None
    if attention_mask.dtype == torch.bool:
        return torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device).masked_fill(
            ~attention_mask, torch.finfo(dtype).min
        )
    return attention_mask.to(dtype)


def aligned_bias(mask: torch.Tensor, heads: int, q_len: int, kv_len: int) -> torch.Tensor:
    """``mask`` as the memory-efficient kernel reads it: rows padded to the kernel's alignment (then
    sliced back), broadcast to ``(batch, heads, q_len, kv_len)`` without copying."""
    mask = mask[..., :kv_len]
    if mask.stride(-2) % _BIAS_ALIGNMENT or mask.stride(-1) != 1:
        padded = torch.nn.functional.pad(mask, (0, -kv_len % _BIAS_ALIGNMENT or _BIAS_ALIGNMENT))
        mask = padded[..., :kv_len]
    return mask.expand(mask.shape[0], heads, q_len, kv_len)


def _attention_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor, str] | None:
    """``(out (batch, heads, length, dim), lse (batch, heads, length), kernel)`` from a fused kernel
    that returns the log-sum-exp, or None where none applies to these tensors."""
    heads, kv_heads, length = query.shape[1], key.shape[1], query.shape[2]

    def full(kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
        # Grouped-query attention: kernels that map query head h to key/value head h // groups
        # take the grouped tensors; others want as many key/value heads as query heads.
        if kv_heads == heads or _kernel_takes_grouped_heads(kernel, query.device.type):
            return key, value
        return repeat_kv(key, heads // kv_heads), repeat_kv(value, heads // kv_heads)

    if _kernel_device(query) == "cpu":
        if _CPU_FLASH is None:  # (_can_merge checked it is there)
            return None
        full_key, full_value = full("cpu_flash")
        out, lse = _CPU_FLASH(query, full_key, full_value, 0.0, causal, attn_mask=mask, scale=scale)
        return out, lse, "cpu_flash"
    # The kernel SDPA itself picks for these tensors (so a re-routed layer runs what its plain
    # neighbours run), then the memory-efficient kernel should that one refuse them.
    for kernel in dict.fromkeys((_sdpa_choice(query, key, value, mask, causal), "efficient")):
        full_key, full_value = full(kernel)
        if (
            kernel == "flash"
            and _CUDA_FLASH is not None
            and mask is None
            and _sdpa_allows("flash", query, full_key, full_value, None, causal)
        ):
            out, lse = _CUDA_FLASH(query, full_key, full_value, 0.0, causal, False, scale=scale)[:2]
            return out, lse, "flash"
        bias = None if mask is None else aligned_bias(mask, heads, length, key.shape[2])
        if (
            kernel == "cudnn"
            and _CUDA_CUDNN is not None
            and _sdpa_allows("cudnn", query, full_key, full_value, bias, causal)
        ):
            try:
                out, lse = _CUDA_CUDNN(query, full_key, full_value, bias, True, 0.0, causal, False, scale=scale)[:2]
                lse = lse.reshape(*query.shape[:3])  # cuDNN's is (batch, heads, length, 1)
            except RuntimeError:  # cuDNN can refuse a graph its checks let through
                continue
            return out, lse, "cudnn"
        if (
            kernel == "efficient"
            and _CUDA_EFFICIENT is not None
            and _sdpa_allows("efficient", query, full_key, full_value, bias, causal)
        ):
            out, lse = _CUDA_EFFICIENT(query, full_key, full_value, bias, True, 0.0, causal, scale=scale)[:2]
            return out, lse[..., :length], "efficient"  # the kernel pads lse's length to its block size
    return None


def _merged_prefix_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    bias: float,
    scaling: float | None = None,
    is_causal: bool | None = None,
    segment_ends: torch.Tensor | None = None,
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
    fused = _attention_with_lse(query, key, value, _additive_mask(attention_mask, query.dtype), causal, scale)
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
    body = _additive_body(attention_mask, query.shape[2], length, query.dtype, query.device)
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
    """Route ``model``'s attention through :func:`kv_reroute_attention`; returns the base used.

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
    (:func:`~kv_embeddings_integrations.core.running.packing.packed_positions`)."""
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
