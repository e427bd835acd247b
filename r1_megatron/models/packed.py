"""Packed training forwards: several sequences in one row, attention within each, positions restarting at each.

A packed row is described by segment_ids [B, T] (1, 2, ... per sequence, 0 on padding). A *segment* here is a
maximal run of equal ids in a row, so a row's padding tail is a segment of its own: it attends only to itself,
which keeps its attention rows non-empty (no NaN) without touching any real token.

Two ways into Megatron's GPTModel:
  - attention mask (SDPAttention, i.e. CPU or GPU without TransformerEngine): a block-diagonal causal mask
    [B, 1, T, T] (Megatron's convention, True = masked out) as GPTModel's attention_mask, and, inside
    `packed_rotary(positions_BT)`, R1GPTModel's rotary hooks (models/gpt.py) return each token's own position's
    frequencies (Megatron's GPTModel ignores position_ids with RoPE);
  - THD (TransformerEngine): the rows flattened into one [1, B·T] sequence and `thd_params` (cu_seqlens over
    every segment), which TE's varlen attention and Megatron's rotary (cu_seqlens) consume.
"""
from __future__ import annotations

import contextlib

import torch


def segment_starts(segment_ids_BT: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: True where a segment starts (each row's first token and wherever the id changes)."""
    starts_BT = torch.ones_like(segment_ids_BT, dtype=torch.bool)
    starts_BT[:, 1:] = segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]
    return starts_BT


def segment_index(segment_ids_BT: torch.Tensor) -> torch.Tensor:
    """[B, T] int64: the index of each token's segment within its row (0, 1, ...), padding runs included."""
    return segment_starts(segment_ids_BT).long().cumsum(dim=1)


def positions_from_segments(segment_ids_BT: torch.Tensor) -> torch.Tensor:
    """[B, T] int64: each token's offset from the start of its segment (0 at every segment start)."""
    B, T = segment_ids_BT.shape
    t_BT = torch.arange(T, device=segment_ids_BT.device).expand(B, T)
    start_BT = torch.where(segment_starts(segment_ids_BT), t_BT, torch.zeros_like(t_BT)).cummax(dim=1).values
    return t_BT - start_BT


def block_causal_mask(segment_ids_BT: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] bool, True = masked out (Megatron's convention): query t sees key s <= t of its own segment."""
    T = segment_ids_BT.shape[1]
    seg_BT = segment_index(segment_ids_BT)
    same_BTT = seg_BT[:, :, None] == seg_BT[:, None, :]
    causal_TT = torch.ones(T, T, dtype=torch.bool, device=segment_ids_BT.device).tril()
    return ~(same_BTT & causal_TT)[:, None]


def thd_params(segment_ids_BT: torch.Tensor):
    """PackedSeqParams(qkv_format="thd") for the rows flattened to one sequence of B·T tokens.

    cu_seqlens (int32, on the ids' device) has a boundary at every segment start of every row (so a row never
    attends into the next, and its padding tail is a segment of its own) and at B·T. max_seqlen is a Python
    int, as TransformerEngine requires (one device sync)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    B, T = segment_ids_BT.shape
    starts_N = segment_starts(segment_ids_BT).reshape(-1).nonzero().squeeze(1)
    total = torch.tensor([B * T], device=starts_N.device, dtype=starts_N.dtype)
    cu_seqlens = torch.cat([starts_N, total]).to(torch.int32)
    max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                           max_seqlen_q=max_seqlen, max_seqlen_kv=max_seqlen)


_POSITIONS: list[torch.Tensor] = []


@contextlib.contextmanager
def packed_rotary(positions_BT: torch.Tensor):
    """Inside this block R1GPTModel's rotary embeddings give token [b, t] the frequencies of positions_BT[b, t]."""
    _POSITIONS.append(positions_BT)
    try:
        yield
    finally:
        _POSITIONS.pop()


def active_positions() -> torch.Tensor | None:
    return _POSITIONS[-1] if _POSITIONS else None


def rotary_at(emb_S11D: torch.Tensor, positions_BT: torch.Tensor) -> torch.Tensor:
    """Rotary frequencies [T, B, 1, D] at `positions_BT` from Megatron's table [S, 1, 1, D] (S > every position)."""
    return emb_S11D[:, 0, 0][positions_BT].transpose(0, 1)[:, :, None]
