"""Packed batching (``batching="packed"``): a batch's texts share rows instead of each taking a
left-padded row of its own.

Texts go into as few rows of the batch's width as hold them (first fit, longest first), one after
another with positions restarting at 0; with no attention mask, transformers masks them apart from
the positions (a block-diagonal causal mask), and the re-routing plan's ``segment_ends`` gives each
text its own final key and value as its prefix
([`rerouting`][kv_embeddings_integrations.core.method.rerouting]). The states are scattered back
into the batch's left-padded layout, so pooling, sparse vectors and intermediate layers read them as
they read a padded pass: the same vectors to rounding, less compute on padding, and no row's
attention wider than the padded batch's.
"""

from __future__ import annotations

import contextlib
import itertools

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast

from ..method import rerouting
from .tokenization import TokenBatch


def packed_positions(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For sequences of ``lengths`` packed into one row: ``(position_ids, segment_ends)``, both
    ``(1, sum(lengths))``: positions restarting at 0 for each sequence (transformers then masks them
    apart), and the index of each position's sequence's final token (its re-routed prefix)."""
    if not lengths or min(lengths) < 1:
        raise ValueError(f"packed sequences need at least one token each, got lengths {lengths}")
    positions = torch.cat([torch.arange(n) for n in lengths])
    ends = torch.cat([torch.full((n,), end - 1) for n, end in zip(lengths, itertools.accumulate(lengths), strict=True)])
    return positions[None], ends[None]


def pack_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Sequences of ``lengths`` into rows of at most ``width`` tokens (first fit, longest first):
    the indices of the sequences in each row. With ``width`` the longest length, there are never
    more rows than sequences, and no row's attention is wider than the padded batch's."""
    if max(lengths) > width:
        raise ValueError(f"a sequence of {max(lengths)} tokens does not fit rows of {width}")
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, free in enumerate(room) if free >= lengths[index]), None)
        if row is None:
            rows.append([])
            room.append(width)
            row = len(rows) - 1
        rows[row].append(index)
        room[row] -= lengths[index]
    return rows


def packed_forward(
    model: PreTrainedModel,
    decoder: PreTrainedModel,
    batch: TokenBatch,
    output_hidden_states: bool,
    layers: list[int],
    bias: float,
    pad_token_id: int,
) -> BaseModelOutputWithPast:
    """One decoder pass without padding: the batch's texts packed into as few rows as fit its width
    ([`pack_rows`][kv_embeddings_integrations.core.running.packing.pack_rows]), each row's unused
    tail a sequence of its own, then scattered back into the batch's left-padded layout, so pooling
    reads them as it reads a padded pass. ``pad_token_id`` fills the rows' unused tails (the padding
    ``collate`` uses)."""
    real = batch.attention_mask.bool()
    lengths = real.sum(dim=1).tolist()
    width = real.shape[1]
    device = batch.input_ids.device
    rows = pack_rows(lengths, width)
    ids, positions, ends, places = [], [], [], []  # places: (text, row, start) of each text
    for r, members in enumerate(rows):
        row_lengths = [lengths[i] for i in members]
        tail = width - sum(row_lengths)
        row_positions, row_ends = packed_positions(row_lengths + ([tail] if tail else []))
        start = 0
        pieces = []
        for i in members:
            pieces.append(batch.input_ids[i, width - lengths[i] :])
            places.append((i, r, start))
            start += lengths[i]
        pieces.append(torch.full((tail,), pad_token_id, dtype=batch.input_ids.dtype, device=device))
        ids.append(torch.cat(pieces))
        positions.append(row_positions[0])
        ends.append(row_ends[0])
    segment_ends = torch.stack(ends).to(device)
    routing = rerouting.reroute(model, layers, bias, segment_ends=segment_ends) if layers else contextlib.nullcontext()
    with torch.inference_mode(), routing:
        # No attention mask: transformers masks the sequences apart from the restarting positions.
        out: BaseModelOutputWithPast = decoder(
            input_ids=torch.stack(ids),
            position_ids=torch.stack(positions).to(device),
            use_cache=False,
            output_hidden_states=output_hidden_states,
        )

    def unpack(packed: torch.Tensor) -> torch.Tensor:
        padded = packed.new_zeros((*real.shape, packed.shape[-1]))
        for i, r, start in places:
            padded[i, width - lengths[i] :] = packed[r, start : start + lengths[i]]
        return padded

    hidden_states = tuple(unpack(h) for h in out.hidden_states) if out.hidden_states is not None else None
    assert out.last_hidden_state is not None
    return BaseModelOutputWithPast(last_hidden_state=unpack(out.last_hidden_state), hidden_states=hidden_states)
