"""Which layers re-route."""

from __future__ import annotations


def window_rule(anchor: int, num_layers: int) -> list[int]:
    """method.md's window: layers ``anchor .. anchor + floor(L / 10)``, clipped to the network."""
    return list(range(anchor, min(anchor + num_layers // 10, num_layers - 1) + 1))


def provisional_auto_layers(num_layers: int) -> list[int]:
    """TEMPORARY stand-in for ``layers="auto"`` until intrinsic-dimension selection lands.

    Anchors method.md's window at the start of the middle third of the network
    (e.g. 30 layers -> 10..13, 36 layers -> 12..15).
    """
    return window_rule(num_layers // 3, num_layers)


def resolve_layers(layers, num_layers: int) -> list[int]:
    """Turn the ``layers`` option into a concrete, validated list (empty: no re-routing)."""
    if layers is None:
        return []
    if layers == "auto":
        return provisional_auto_layers(num_layers)
    bad = [i for i in layers if i >= num_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {num_layers} layers (0..{num_layers - 1})")
    return list(layers)
