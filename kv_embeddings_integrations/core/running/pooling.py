"""Pooling of the final layer's hidden states into one vector per text."""

from __future__ import annotations

import torch


def pool_hidden_states(hidden: torch.Tensor, mean_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool left-padded hidden states.

    Args:
        hidden: ``(batch, seq, dim)`` final-layer hidden states, left padded, so every row's last
            real token sits at position ``-1``.
        mean_mask: ``(batch, seq)`` bool, the tokens mean pooling averages (never padding).
        pooling: ``"mean_last"``, ``"mean"`` or ``"last"``.

    Returns:
        ``(batch, dim)`` float32 vectors, not normalised.
    """
    hidden = hidden.float()
    last = hidden[:, -1]
    if pooling == "last":
        return last
    # where() rather than multiply: padded positions may hold non-finite values.
    summed = torch.where(mean_mask[..., None], hidden, 0.0).sum(dim=1)
    mean = summed / mean_mask.sum(dim=1, keepdim=True).clamp(min=1)
    if pooling == "mean":
        return mean
    if pooling == "mean_last":
        return (mean + last) / 2
    raise ValueError(f"unknown pooling {pooling!r}")
