"""SDPA's fused attention kernels with their log-sum-exp, and the additive masks they take.

A re-routed layer merges its prefix into the attention output through that output's log-sum-exp
([`kv_reroute_attention`][kv_embeddings_integrations.core.method.rerouting.kv_reroute_attention]),
which torch's public SDPA drops; so it calls SDPA's fused kernels itself. Everything that depends on
the device and the torch build (which kernels exist, which one SDPA would pick, what torch's checks
allow, whether a kernel maps grouped heads itself) sits in one
[`KernelTable`][kv_embeddings_integrations.core.method.kernels.KernelTable]:
[`TORCH_KERNELS`][kv_embeddings_integrations.core.method.kernels.TORCH_KERNELS] unless
[`use_kernels`][kv_embeddings_integrations.core.method.kernels.use_kernels] swaps it, so tests run
the CUDA branch on the CPU with emulated kernels, and benchmarks force concatenation, by swapping
one object.

Kernels: the CPU flash kernel; on CUDA the one SDPA itself picks for these tensors (cuDNN, flash or
memory-efficient: what the plain layers run), else the memory-efficient kernel where torch's checks
allow it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import torch
from torch.nn.attention import SDPBackend
from transformers.integrations.sdpa_attention import repeat_kv

# An aten SDPA kernel, called with torch's arguments; the first two items it returns are out and lse.
Kernel = Callable[..., Any]
# (query, key, value, additive mask or None, causal) -> "flash", "efficient", "cudnn" or "".
SDPAChoice = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, bool], str]
# (kernel, query, key, value, additive mask or None, causal) -> whether torch's checks let it run.
SDPAAllows = Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, bool], bool]

BIAS_ALIGNMENT = 16
"""The memory-efficient kernel reads its bias in rows aligned to this many elements (torch's SDPA
pads the mask the same way before calling it)."""

# SDPA's fused kernels, called directly for their log-sum-exp (absent from some torch builds).
_CPU_FLASH: Kernel | None = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_CUDA_FLASH: Kernel | None = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention", None)
_CUDA_EFFICIENT: Kernel | None = getattr(torch.ops.aten, "_scaled_dot_product_efficient_attention", None)
_CUDA_CUDNN: Kernel | None = getattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention", None)


@dataclass(frozen=True)
class KernelTable:
    """The fused kernels a re-routed layer may run, and how one is chosen for given tensors.

    Fields are the leaves that depend on the device and the torch build; the choosing logic
    ([`attention_with_lse`][kv_embeddings_integrations.core.method.kernels.KernelTable.attention_with_lse])
    is the same for every table. A kernel of ``None`` is absent.

    Attributes:
        device: which set of fused kernels serves a tensor: ``"cpu"`` or ``"cuda"`` (others: none).
        cpu_flash: ``aten._scaled_dot_product_flash_attention_for_cpu``.
        flash: ``aten._scaled_dot_product_flash_attention``.
        efficient: ``aten._scaled_dot_product_efficient_attention`` (the CUDA fallback).
        cudnn: ``aten._scaled_dot_product_cudnn_attention``.
        sdpa_choice: the kernel SDPA itself would run for these tensors.
        sdpa_allows: torch's own checks (dtype, head size, alignment, GPU) for a kernel.
        takes_grouped_heads: ``(kernel, device type)``: whether the kernel maps query heads onto
            fewer key/value heads itself.
    """

    device: Callable[[torch.Tensor], str]
    cpu_flash: Kernel | None
    flash: Kernel | None
    efficient: Kernel | None
    cudnn: Kernel | None
    sdpa_choice: SDPAChoice
    sdpa_allows: SDPAAllows
    takes_grouped_heads: Callable[[str, str], bool]

    def unfused(self) -> KernelTable:
        """This table without its fused kernels: re-routed layers then concatenate the prefix."""
        return replace(self, cpu_flash=None, flash=None, efficient=None, cudnn=None)

    def serves(self, query: torch.Tensor) -> bool:
        """Whether a fused kernel with a log-sum-exp may take ``query``'s device (on CUDA the
        memory-efficient kernel must be there: it is the fallback)."""
        device = self.device(query)
        return (device == "cpu" and self.cpu_flash is not None) or (device == "cuda" and self.efficient is not None)

    def attention_with_lse(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor, str] | None:
        """``(out (batch, heads, length, dim), lse (batch, heads, length), kernel)`` from a fused
        kernel that returns the log-sum-exp, or None where none applies to these tensors.

        ``mask``: additive ([`additive_mask`][kv_embeddings_integrations.core.method.kernels.additive_mask]).
        """
        heads, kv_heads, length = query.shape[1], key.shape[1], query.shape[2]

        def full(kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
            # Grouped-query attention: kernels that map query head h to key/value head h // groups
            # take the grouped tensors; others want as many key/value heads as query heads.
            if kv_heads == heads or self.takes_grouped_heads(kernel, query.device.type):
                return key, value
            return repeat_kv(key, heads // kv_heads), repeat_kv(value, heads // kv_heads)

        if self.device(query) == "cpu":
            if self.cpu_flash is None:
                return None
            full_key, full_value = full("cpu_flash")
            out, lse = self.cpu_flash(query, full_key, full_value, 0.0, causal, attn_mask=mask, scale=scale)
            return out, lse, "cpu_flash"
        # The kernel SDPA itself picks for these tensors (so a re-routed layer runs what its plain
        # neighbours run), then the memory-efficient kernel should that one refuse them.
        for kernel in dict.fromkeys((self.sdpa_choice(query, key, value, mask, causal), "efficient")):
            full_key, full_value = full(kernel)
            if (
                kernel == "flash"
                and self.flash is not None
                and mask is None
                and self.sdpa_allows("flash", query, full_key, full_value, None, causal)
            ):
                out, lse = self.flash(query, full_key, full_value, 0.0, causal, False, scale=scale)[:2]
                return out, lse, "flash"
            bias = None if mask is None else aligned_bias(mask, heads, length, key.shape[2])
            if (
                kernel == "cudnn"
                and self.cudnn is not None
                and self.sdpa_allows("cudnn", query, full_key, full_value, bias, causal)
            ):
                try:
                    out, lse = self.cudnn(query, full_key, full_value, bias, True, 0.0, causal, False, scale=scale)[:2]
                    lse = lse.reshape(*query.shape[:3])  # cuDNN's is (batch, heads, length, 1)
                except RuntimeError:  # cuDNN can refuse a graph its checks let through
                    continue
                return out, lse, "cudnn"
            if (
                kernel == "efficient"
                and self.efficient is not None
                and self.sdpa_allows("efficient", query, full_key, full_value, bias, causal)
            ):
                out, lse = self.efficient(query, full_key, full_value, bias, True, 0.0, causal, scale=scale)[:2]
                return out, lse[..., :length], "efficient"  # the kernel pads lse's length to its block size
        return None


def _device_type(tensor: torch.Tensor) -> str:
    return tensor.device.type


@cache
def _takes_grouped_heads(kernel: str = "cpu_flash", device: str = "cpu") -> bool:
    """Whether torch's ``kernel`` maps query heads onto fewer key/value heads itself (tried once per device)."""
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
    grouped = key.shape[1] != query.shape[1]
    params = torch.backends.cuda.SDPAParams(query, key, value, mask, 0.0, causal, grouped)
    return bool(_CHECKS[kernel](params))


def _sdpa_choice(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, causal: bool
) -> str:
    grouped = key.shape[1] != query.shape[1]
    choice = torch._fused_sdp_choice(query, key, value, mask, 0.0, causal, enable_gqa=grouped)
    return _BACKENDS.get(int(choice), "")


TORCH_KERNELS = KernelTable(
    device=_device_type,
    cpu_flash=_CPU_FLASH,
    flash=_CUDA_FLASH,
    efficient=_CUDA_EFFICIENT,
    cudnn=_CUDA_CUDNN,
    sdpa_choice=_sdpa_choice,
    sdpa_allows=_sdpa_allows,
    takes_grouped_heads=_takes_grouped_heads,
)
"""Torch's own kernels and checks: the table re-routing uses unless
[`use_kernels`][kv_embeddings_integrations.core.method.kernels.use_kernels] swaps it."""

_active = TORCH_KERNELS


def active_kernels() -> KernelTable:
    """The table a re-routing plan started now runs with."""
    return _active


@contextlib.contextmanager
def use_kernels(table: KernelTable) -> Iterator[KernelTable]:
    """Re-route with ``table`` inside this block, in every thread (a plan takes the table active
    when it starts); for tests and benchmarks."""
    global _active
    previous, _active = _active, table
    try:
        yield table
    finally:
        _active = previous


def additive_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``attention_mask`` as the kernels take it: additive. A finite minimum (not -inf) keeps fully
    masked rows (left padding) finite; SDPA converts boolean masks the same way for every layer."""
    if attention_mask is None:
        return None
    if attention_mask.dtype == torch.bool:
        return torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device).masked_fill(
            ~attention_mask, torch.finfo(dtype).min
        )
    return attention_mask.to(dtype)


def additive_body(
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
    body = additive_body(attention_mask, q_len, kv_len, dtype, device)
    prefix = torch.full((*body.shape[:-1], 1), bias, dtype=dtype, device=device)
    return torch.cat([prefix, body], dim=-1)


def aligned_bias(mask: torch.Tensor, heads: int, q_len: int, kv_len: int) -> torch.Tensor:
    """``mask`` as the memory-efficient kernel reads it: rows padded to
    [`BIAS_ALIGNMENT`][kv_embeddings_integrations.core.method.kernels.BIAS_ALIGNMENT] (then sliced
    back), broadcast to ``(batch, heads, q_len, kv_len)`` without copying."""
    mask = mask[..., :kv_len]
    if mask.stride(-2) % BIAS_ALIGNMENT or mask.stride(-1) != 1:
        padded = torch.nn.functional.pad(mask, (0, -kv_len % BIAS_ALIGNMENT or BIAS_ALIGNMENT))
        mask = padded[..., :kv_len]
    return mask.expand(mask.shape[0], heads, q_len, kv_len)
