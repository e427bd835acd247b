"""Sequences to micro-batches (placeholder until the packing module lands: padding only)."""
from __future__ import annotations

import dataclasses

import torch

from r1_megatron.training.micro_batch import MicroBatch


@dataclasses.dataclass
class TrainSequence:
    tokens: list[int]
    loss_mask: list[float]  # per label position: len(tokens) - 1
    extras: dict[str, list[float]] = dataclasses.field(default_factory=dict)


def pad_batches(seqs: list[TrainSequence], micro_batch_size: int, seq_len: int, pad_id: int) -> list[MicroBatch]:
    out = []
    for start in range(0, len(seqs), micro_batch_size):
        chunk = seqs[start:start + micro_batch_size]
        B = micro_batch_size
        ids = torch.full((B, seq_len + 1), pad_id, dtype=torch.int64)
        mask = torch.zeros(B, seq_len)
        for b, s in enumerate(chunk):
            ids[b, :len(s.tokens)] = torch.tensor(s.tokens)
            mask[b, :len(s.loss_mask)] = torch.tensor(s.loss_mask)
        out.append(MicroBatch(ids[:, :-1], ids[:, 1:], mask))
    return out


def pack_batches(seqs, max_tokens: int, pad_id: int, rows: int = 1) -> list[MicroBatch]:
    raise NotImplementedError("placeholder")
