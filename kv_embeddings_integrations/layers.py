"""Resolving the ``layers`` option into the list of layers to re-route."""

from __future__ import annotations


def resolve_layers(layers: list[int] | None, num_layers: int) -> list[int]:
    """Validate an explicit ``layers`` list (``None``: no re-routing, an empty list)."""
    if layers is None:
        return []
    bad = [i for i in layers if i >= num_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {num_layers} layers (0..{num_layers - 1})")
    return list(layers)
