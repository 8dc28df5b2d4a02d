"""Length-aware batching: reviews of similar length share a batch, padded only to the batch's longest."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor


def length_bucketed_batches(lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0,
                            bucket_batches: int = 50) -> list[list[int]]:
    """Indices grouped into batches.

    Shuffled: examples are shuffled, sorted by length within buckets of `bucket_batches` batches, cut into
    batches, and the batches shuffled (random order, little padding). Not shuffled: sorted by length.
    """
    order = list(range(len(lengths)))
    if not shuffle:
        order.sort(key=lambda i: lengths[i])
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(order)
    bucket = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), bucket):
        chunk = sorted(order[start:start + bucket], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(rows: Sequence[Sequence[int]], labels: Sequence[int], pad_token_id: int) -> dict[str, Tensor]:
    """Token id lists -> input_ids (B, longest), attention_mask, labels."""
    longest = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.as_tensor(row)
        attention_mask[i, :len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": torch.as_tensor(labels)}


def inference_order(lengths: Sequence[int], batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Batches of indices sorted by length, for inference (validation, tests, predictions): process `rank` of `world`
    gets every world-th batch."""
    return length_bucketed_batches(lengths, batch_size, shuffle=False)[rank::world]


def inference_batches(rows: Sequence[Sequence[int]], batch_size: int, pad_token_id: int, rank: int = 0,
                      world: int = 1) -> Iterator[tuple[list[int], dict[str, Tensor]]]:
    """(indices, input_ids and attention_mask) of `inference_order`'s batches."""
    for batch in inference_order([len(r) for r in rows], batch_size, rank, world):
        yield batch, collate([rows[i] for i in batch], [0] * len(batch), pad_token_id)
