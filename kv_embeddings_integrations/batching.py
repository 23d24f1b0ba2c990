"""Length-sorted batch planning: fewer padded tokens, and a bound on tokens per forward pass."""

from __future__ import annotations


def plan_batches(lengths: list[int], batch_size: int | None, max_tokens_per_batch: int | None) -> list[list[int]]:
    """Group indices into batches of similar length, longest first (so memory peaks early).

    A batch holds at most ``batch_size`` rows and, if ``max_tokens_per_batch`` is set, at most
    that many padded tokens (rows x longest row); a row longer than the budget runs alone.
    With neither limit set, everything is one batch.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        if current:
            full = batch_size is not None and len(current) >= batch_size
            # Sorted descending, so the first row of the batch sets its padded width.
            over = max_tokens_per_batch is not None and (len(current) + 1) * lengths[current[0]] > max_tokens_per_batch
            if full or over:
                batches.append(current)
                current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
