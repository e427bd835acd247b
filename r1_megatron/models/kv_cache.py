"""The KV cache of in-process generation, and the per-forward context that tells the model where tokens go.

Megatron-Core 0.16.1 has no cache we can use for continuous batching on every backend: StaticInferenceContext
shares one sequence offset across the batch, and DynamicInferenceContext needs flash-attn (no CPU). So generation
runs the ordinary training forward with no Megatron inference context, inside `forward_context(ctx)`:
  - R1GPTModel's rope hooks (models/gpt.py) return per-token rotary frequencies for ctx.positions_BT, so every
    row of the batch sits at its own position;
  - core attention (models/attention.py) writes this forward's keys/values into the cache and attends over the
    row's cached prefix instead of the current tokens only;
  - the output-layer hook computes logits only at ctx.logit_index_B (one position per row).
The cache is slot-based (nano-vllm's idea without paging): slot s holds one sequence's keys and values for
positions 0..max_seq_len-1, in every layer; a row names its slot, so rows can join and leave between forwards.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn.functional as F


class KVCache:
    """Keys and values per layer, [num_slots, max_seq_len, heads, dim] each, allocated at a layer's first write
    (the layer's shapes and dtype come from its own key/value tensors, so any attention variant fits)."""

    def __init__(self, num_slots: int, max_seq_len: int):
        if num_slots < 1 or max_seq_len < 2:
            raise ValueError(f"KVCache needs num_slots >= 1 and max_seq_len >= 2, got {num_slots}, {max_seq_len}")
        self.num_slots, self.max_seq_len = num_slots, max_seq_len
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def layer(self, layer: int, key_TBGD: torch.Tensor, value_TBGE: torch.Tensor):
        if layer not in self.keys:
            shape = (self.num_slots, self.max_seq_len)
            self.keys[layer] = key_TBGD.new_zeros(shape + tuple(key_TBGD.shape[2:]))
            self.values[layer] = value_TBGE.new_zeros(shape + tuple(value_TBGE.shape[2:]))
        return self.keys[layer], self.values[layer]

    def copy_prefix(self, src_slots: list[int], dst_slots: list[int], lengths: list[int]) -> None:
        """Slot dst_slots[i] gets positions [0, lengths[i]) of src_slots[i], in every layer (prompt sharing)."""
        for cache in (*self.keys.values(), *self.values.values()):
            for src, dst, length in zip(src_slots, dst_slots, lengths):
                cache[dst, :length].copy_(cache[src, :length])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys.values(), *self.values.values()))

    def free(self) -> None:
        self.keys.clear()
        self.values.clear()


@dataclasses.dataclass
class ForwardContext:
    """Where the tokens of one generation forward sit.

    slot_B: int64 [B], each row's cache slot. positions_BT: int64 [B, T], each token's position in its sequence
    (rows are right-padded; a padding token gets a position past its row's real tokens, so its key lands where
    a later real token overwrites it before anything attends to it). kv_len: keys attended over, max position + 1.
    logit_index_B: int64 [B], the index along T whose logits the model returns for each row (its last real token).
    """

    cache: KVCache
    slot_B: torch.Tensor
    positions_BT: torch.Tensor
    kv_len: int
    logit_index_B: torch.Tensor

    def attend(self, layer: int, query_TBND: torch.Tensor, key_TBGD: torch.Tensor, value_TBGE: torch.Tensor,
               softmax_scale: float) -> torch.Tensor:
        """Write this forward's keys/values, then causal attention over each row's cached prefix.

        Query at position p attends to the cached keys at positions <= p of its row's slot. Returns
        [T, B, N·E] like Megatron's core attention."""
        keys_SLGD, values_SLGE = self.cache.layer(layer, key_TBGD, value_TBGE)
        slot_B1 = self.slot_B[:, None]
        keys_SLGD[slot_B1, self.positions_BT] = key_TBGD.transpose(0, 1)
        values_SLGE[slot_B1, self.positions_BT] = value_TBGE.transpose(0, 1)
        k_BGKD = keys_SLGD[self.slot_B, :self.kv_len].transpose(1, 2)
        v_BGKE = values_SLGE[self.slot_B, :self.kv_len].transpose(1, 2)
        key_pos_K = torch.arange(self.kv_len, device=query_TBND.device)
        visible_B1TK = (key_pos_K <= self.positions_BT[:, :, None])[:, None]
        q_BNTD = query_TBND.permute(1, 2, 0, 3)
        out_BNTE = F.scaled_dot_product_attention(q_BNTD, k_BGKD, v_BGKE, attn_mask=visible_B1TK,
                                                  scale=softmax_scale, enable_gqa=k_BGKD.shape[1] != q_BNTD.shape[1])
        T, B = query_TBND.shape[:2]
        return out_BNTE.permute(2, 0, 1, 3).reshape(T, B, -1)


_ACTIVE: list[ForwardContext] = []


@contextlib.contextmanager
def forward_context(ctx: ForwardContext):
    """Run the model's forwards inside this block as generation forwards described by ctx."""
    _ACTIVE.append(ctx)
    try:
        yield ctx
    finally:
        _ACTIVE.pop()


def active_context() -> ForwardContext | None:
    return _ACTIVE[-1] if _ACTIVE else None
