"""Training sequences -> MicroBatches: one sequence per row, right-padded (`pad_batches`), or several per row,
packed (`pack_batches`). The same for SFT examples and GRPO rollouts.

A sequence of n tokens fills n - 1 positions of a row: input ``tokens[:-1]``, labels ``tokens[1:]``, its
``loss_mask`` and per-label ``extras`` (e.g. old log-probabilities) as they are. A packed row holds whole
sequences only (never one split across rows, so no label crosses a sequence boundary), each with positions
restarting at 0 and its own segment id (1, 2, ... in the row, 0 on padding); attention must stay within a
segment. Packing is first-fit decreasing on lengths, deterministic for the same input; every micro-batch of one
call has the same shape [rows, max_tokens]. Efficiency = real positions / computed positions (`packing_stats`).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Iterable, Mapping, Protocol, Sequence

import numpy as np
import torch

from r1_megatron.training.micro_batch import MicroBatch


class SequenceLike(Protocol):
    """What the packers read: a TrainSequence, an SFTExample, or any object with these three attributes."""

    @property
    def tokens(self) -> Sequence[int]: ...

    @property
    def loss_mask(self) -> Sequence[float]: ...

    @property
    def extras(self) -> Mapping[str, Sequence[float]]: ...


@dataclasses.dataclass
class TrainSequence:
    """One sequence to train on: ``loss_mask[t]`` and every ``extras[k][t]`` belong to position t (input
    ``tokens[t]``, label ``tokens[t + 1]``; len(tokens) - 1 entries each): a list of floats, or a tensor [n, ...]."""

    tokens: list[int]
    loss_mask: list[float]
    extras: dict[str, list[float] | torch.Tensor] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        _check(self, "TrainSequence", keys=None)


def _check(seq: SequenceLike, name: str, keys: list[str] | None) -> None:
    n = len(seq.tokens) - 1
    if n < 1:
        raise ValueError(f"{name} has {len(seq.tokens)} tokens: a training sequence needs at least 2")
    if len(seq.loss_mask) != n:
        raise ValueError(f"{name}: loss_mask has {len(seq.loss_mask)} entries, expected len(tokens) - 1 = {n}")
    if keys is not None and sorted(seq.extras) != keys:
        raise ValueError(f"{name} has extras {sorted(seq.extras)}, sequence 0 has {keys}: all must have the same")
    for key, values in seq.extras.items():
        if len(values) != n:
            raise ValueError(f"{name}: extras[{key!r}] has {len(values)} entries, expected len(tokens) - 1 = {n}")


def _extras_keys(seqs: Sequence[SequenceLike]) -> list[str]:
    """The extras every sequence has (checked), after checking each sequence's lengths."""
    keys = sorted(seqs[0].extras) if seqs else []
    for i, seq in enumerate(seqs):
        _check(seq, f"sequence {i}", keys)
    return keys


def flat_tensor(lists: Iterable[Iterable[float]], count: int, dtype: torch.dtype) -> torch.Tensor:
    """[count] tensor: the lists laid end to end (numpy reads Python numbers ~10x faster than torch.tensor;
    the float32 values round exactly as torch.tensor(list, dtype=torch.float32) rounds them)."""
    np_dtype = {torch.long: np.int64, torch.float32: np.float32}[dtype]
    return torch.from_numpy(np.fromiter(itertools.chain.from_iterable(lists), dtype=np_dtype, count=count))


def _micro_batch(rows: Sequence[Sequence[SequenceLike]], T: int, pad_id: int, keys: Sequence[str],
                 packed: bool) -> MicroBatch:
    """[len(rows), T] with each row's sequences laid end to end from position 0, then padding.

    Every field is flattened over all sequences, row by row, once, then written by one masked_scatter_: it fills
    the positions filled_BT = (t < row_len_B[b]) in row-major order, which is exactly that flat order. Sequence s
    (n_S[s] = len(tokens) - 1 positions) owns flat positions off_S[s] + [0, n_S[s]); its tokens start at
    off_S[s] + s in the flat token list (one more token than positions per sequence before it), so position
    j's input is token j + seq_P[j] and its label the token after.
    """
    B = len(rows)
    seqs = [seq for row in rows for seq in row]
    n_S = torch.tensor([len(seq.tokens) - 1 for seq in seqs], dtype=torch.long)
    row_len_B = torch.tensor([sum(len(seq.tokens) - 1 for seq in row) for row in rows], dtype=torch.long)
    P, S = int(n_S.sum()), len(seqs)
    seq_P = torch.repeat_interleave(torch.arange(S), n_S)
    tokens_P = flat_tensor((seq.tokens for seq in seqs), P + S, torch.long)
    filled_BT = torch.arange(T) < row_len_B[:, None]
    mb = MicroBatch(torch.full((B, T), pad_id, dtype=torch.long), torch.full((B, T), pad_id, dtype=torch.long),
                    torch.zeros(B, T))
    mb.input_ids.masked_scatter_(filled_BT, tokens_P[torch.arange(P) + seq_P])
    mb.labels.masked_scatter_(filled_BT, tokens_P[torch.arange(P) + seq_P + 1])
    mb.loss_mask.masked_scatter_(filled_BT, flat_tensor((seq.loss_mask for seq in seqs), P, torch.float32))
    for key in keys:
        mb.extras[key] = _extra(key, seqs, filled_BT, P)
    if packed:
        # padding continues the last sequence's positions (as MicroBatch.pad_to does), so rotary tables stay in
        # range: position t - row_len + n_last past the row's end (0-based from its last sequence's start)
        n_last_B = torch.tensor([len(row[-1].tokens) - 1 if row else 0 for row in rows], dtype=torch.long)
        mb.position_ids = torch.arange(T) - (row_len_B - n_last_B)[:, None]
        off_S = torch.cumsum(n_S, 0) - n_S
        mb.position_ids.masked_scatter_(filled_BT, torch.arange(P) - off_S[seq_P])
        segment_S = torch.tensor([i for row in rows for i in range(1, len(row) + 1)], dtype=torch.long)
        mb.segment_ids = torch.zeros(B, T, dtype=torch.long)
        mb.segment_ids.masked_scatter_(filled_BT, segment_S[seq_P])
    return mb


def _extra(key: str, seqs: Sequence[SequenceLike], filled_BT: torch.Tensor, P: int) -> torch.Tensor:
    """extras[key] of the micro-batch: [B, T] float from per-position lists; [B, T, ...] from per-position tensors
    [n, ...] (integers widened to hold the padding value -1, e.g. routed expert ids)."""
    first = seqs[0].extras[key] if seqs else None
    if not torch.is_tensor(first):
        return torch.zeros(filled_BT.shape).masked_scatter_(
            filled_BT, flat_tensor((seq.extras[key] for seq in seqs), P, torch.float32))
    dtype = first.dtype if first.is_floating_point() else torch.promote_types(first.dtype, torch.int16)
    out = torch.full((*filled_BT.shape, *first.shape[1:]), 0 if first.is_floating_point() else -1, dtype=dtype)
    out[filled_BT] = torch.cat([seq.extras[key] for seq in seqs]).to(dtype)
    return out


def _check_fits(lengths: Sequence[int], budget: int, what: str) -> None:
    if budget < 1:
        raise ValueError(f"{what} must be >= 1, got {budget}")
    for i, n in enumerate(lengths):
        if n > budget:
            raise ValueError(f"sequence {i} fills {n} positions (len(tokens) - 1), more than {what}={budget}; "
                             f"truncate it (max_seq_len) or raise {what}")


def pad_batches(seqs: Sequence[SequenceLike], micro_batch_size: int, seq_len: int, pad_id: int) -> list[MicroBatch]:
    """One sequence per row, right-padded to ``seq_len``, ``micro_batch_size`` rows per micro-batch (the last
    filled with empty rows: pad tokens, loss mask 0); position_ids and segment_ids None (plain causal)."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    keys = _extras_keys(seqs)
    _check_fits([len(s.tokens) - 1 for s in seqs], seq_len, "seq_len")
    rows = [[s] for s in seqs]
    rows += [[]] * (-len(rows) % micro_batch_size)
    return _micro_batch(rows, seq_len, pad_id, keys, packed=False).split_rows(micro_batch_size)


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of sequence indices, each bin's lengths summing to at most ``capacity``: the longest first (ties by
    index), each into the first bin it fits; indices ascending within a bin. Deterministic."""
    _check_fits(lengths, capacity, "max_tokens_per_micro_batch")
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        k = next((k for k, room in enumerate(free) if room >= lengths[i]), len(bins))
        if k == len(bins):
            bins.append([])
            free.append(capacity)
        bins[k].append(i)
        free[k] -= lengths[i]
    return [sorted(b) for b in bins]


def pack_batches(seqs: Sequence[SequenceLike], max_tokens_per_micro_batch: int, pad_id: int,
                 rows: int = 1) -> list[MicroBatch]:
    """Whole sequences packed into rows of ``max_tokens_per_micro_batch`` positions, ``rows`` rows per
    micro-batch (the last filled with empty rows); position_ids restart at 0 per sequence, segment_ids 1, 2, ...
    per row and 0 on padding. A sequence longer than the budget is a ValueError."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    keys = _extras_keys(seqs)
    bins = first_fit_decreasing([len(s.tokens) - 1 for s in seqs], max_tokens_per_micro_batch)
    packed_rows = [[seqs[i] for i in b] for b in bins]
    packed_rows += [[]] * (-len(packed_rows) % rows)
    return _micro_batch(packed_rows, max_tokens_per_micro_batch, pad_id, keys, packed=True).split_rows(rows)


def extend_to(batches: list[MicroBatch], count: int, pad_id: int) -> list[MicroBatch]:
    """``batches`` followed by empty micro-batches of the same shape (loss mask 0) up to ``count``: data-parallel
    ranks must run the same number of micro-batches, and packing can give ranks different counts."""
    if not batches:
        raise ValueError("extend_to needs at least one micro-batch to take the shape from")
    if count < len(batches):
        raise ValueError(f"extend_to({count}): there are already {len(batches)} micro-batches")
    first = batches[0]
    empty = empty_batch(*first.shape, pad_id, [k for k, v in first.extras.items() if v.dim() == 2], first.packed)
    return batches + [empty] * (count - len(batches))


def empty_batch(rows: int, T: int, pad_id: int, keys: Sequence[str] = (), packed: bool = False) -> MicroBatch:
    """A [rows, T] micro-batch with nothing in it (loss mask 0, zero extras `keys`), packed (segments 0) or not:
    what a rank with no sequences runs so that every rank runs the same forwards."""
    return _micro_batch([[]] * rows, T, pad_id, keys, packed)


@dataclasses.dataclass(frozen=True)
class PackingStats:
    sequences: int
    micro_batches: int
    real_tokens: int  # positions holding a sequence's token (sum of len(tokens) - 1)
    computed_tokens: int  # positions the model computes: micro-batches x rows x T
    trained_tokens: int  # positions with loss_mask > 0

    @property
    def efficiency(self) -> float:
        """real / computed tokens (1.0: no padding); 0.0 for no micro-batches."""
        return self.real_tokens / self.computed_tokens if self.computed_tokens else 0.0

    def metrics(self) -> dict[str, float]:
        return {"packing/efficiency": self.efficiency, "packing/micro_batches": float(self.micro_batches),
                "packing/real_tokens": float(self.real_tokens), "packing/trained_tokens": float(self.trained_tokens)}


def packing_stats(seqs: Sequence[SequenceLike], batches: Sequence[MicroBatch]) -> PackingStats:
    """How well ``batches`` (made from ``seqs`` by pad_batches or pack_batches) use the computed positions."""
    return PackingStats(sequences=len(seqs), micro_batches=len(batches),
                        real_tokens=sum(len(s.tokens) - 1 for s in seqs),
                        computed_tokens=sum(mb.shape[0] * mb.shape[1] for mb in batches),
                        trained_tokens=sum(sum(1 for m in s.loss_mask if m > 0) for s in seqs))
