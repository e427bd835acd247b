"""Conversations (prompt + response token ids) as micro-batches: one per row (right-padded) or packed several to
a row, with the loss on response tokens only. Shared by the packed-forward tests and the layout tests."""
from __future__ import annotations

import dataclasses

import torch

from r1_megatron.training.micro_batch import MicroBatch

# (prompt, response) lengths: one-token sequences, long and short ones, ≥ 3 sequences to a packed row
LENGTHS = ((3, 5), (2, 2), (6, 7), (1, 1), (4, 3), (2, 9))
ROWS = ((0, 1, 2), (3, 4, 5))  # which conversations share a packed row


@dataclasses.dataclass
class Conversation:
    ids: list[int]  # prompt then response
    prompt_len: int

    def tensors(self):
        """(input ids, next-token labels, loss mask): the loss counts labels that are response tokens."""
        ids = torch.tensor(self.ids)
        chosen = (torch.arange(1, len(self.ids)) >= self.prompt_len).float()
        return ids[:-1], ids[1:], chosen


def conversations(vocab: int, seed: int = 0, lengths=LENGTHS) -> list[Conversation]:
    g = torch.Generator().manual_seed(seed)
    return [Conversation(torch.randint(0, vocab, (p + r,), generator=g).tolist(), p) for p, r in lengths]


def one_per_row(convs: list[Conversation]) -> MicroBatch:
    """Row i holds conversation i, right-padded with token 0 (loss mask 0); no segment ids."""
    T = max(len(c.ids) - 1 for c in convs)
    ids, labels, mask = (torch.zeros(len(convs), T, dtype=dt) for dt in (torch.long, torch.long, torch.float))
    for i, c in enumerate(convs):
        x, y, m = c.tensors()
        ids[i, :len(x)], labels[i, :len(x)], mask[i, :len(x)] = x, y, m
    return MicroBatch(ids, labels, mask)


def packed(convs: list[Conversation], rows=ROWS, T: int | None = None) -> tuple[MicroBatch, list[tuple]]:
    """Conversations packed into rows (segment ids 1, 2, ... per row, 0 on the padding tail) and, per
    conversation, where it went: (row, start, length)."""
    T = T or max(sum(len(convs[i].ids) - 1 for i in row) for row in rows) + 2  # a padding tail in every row
    ids, labels, positions, segments = (torch.zeros(len(rows), T, dtype=torch.long) for _ in range(4))
    mask = torch.zeros(len(rows), T)
    where = [None] * len(convs)
    for r, row in enumerate(rows):
        start = 0
        for k, i in enumerate(row):
            x, y, m = convs[i].tensors()
            n = len(x)
            span = slice(start, start + n)
            ids[r, span], labels[r, span], mask[r, span] = x, y, m
            positions[r, span], segments[r, span] = torch.arange(n), k + 1
            where[i] = (r, start, n)
            start += n
        positions[r, start:] = torch.arange(T - start)  # the padding tail counts from 0, as a segment of its own
    return MicroBatch(ids, labels, mask, positions, segments), where


def per_conversation(out_BTV: torch.Tensor, where: list[tuple]) -> list[torch.Tensor]:
    """Each conversation's outputs [n, ...] from a packed forward."""
    return [out_BTV[r, start:start + n] for r, start, n in where]


def per_row(out_BTV: torch.Tensor, convs: list[Conversation]) -> list[torch.Tensor]:
    """Each conversation's outputs [n, ...] from a one-per-row forward."""
    return [out_BTV[i, :len(c.ids) - 1] for i, c in enumerate(convs)]
