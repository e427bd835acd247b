"""The paged KV cache of in-process generation, and the per-forward context that tells the model where tokens go.

Megatron-Core 0.16.1 has no cache we can use for continuous batching on every backend: StaticInferenceContext
shares one sequence offset across the batch, and DynamicInferenceContext needs flash-attn (no CPU). So generation
runs the ordinary training forward with no Megatron inference context, inside `forward_context(ctx)`:
  - the forward's tokens are one flat row [1, N]: every scheduled sequence's chunk of new tokens, back to back,
    with no padding (decode rows of one token first, then multi-token prefill chunks);
  - R1GPTModel's rope hooks (models/gpt.py) return per-token rotary frequencies for ctx.positions_N;
  - core attention (models/attention.py) writes this forward's keys/values into their cache slots and attends
    over each sequence's cached keys (models/cache_attention.py): the decode rows with the paged decode-attention
    kernel, which reads the cache blocks in place, and each prefill chunk causally over its sequence's context;
  - the output-layer hook computes logits only at ctx.logit_index_R (the last token of each chunk that samples).

The cache is vLLM's paged layout: per layer, keys [num_blocks, block_size, heads, dim] and values likewise; a
sequence's positions live in the blocks of its block table (rollout/block_manager.py), so memory is shared
between the samples of a prompt and taken only as sequences grow. For MLA's latent cache (models/mla.py),
a layer caches one "key" per token, [compressed kv ; rope key], and its values are the first kv_lora_rank
channels of that key (a view, no second copy).
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from r1_megatron.models.cache_attention import cached_attention


class KVCache:
    """Keys and values per layer, [num_blocks, block_size, heads, dim] each, allocated at a layer's first write
    (the layer's shapes and dtype come from its own key/value tensors, so any attention variant fits)."""

    def __init__(self, num_blocks: int, block_size: int, *, mla_latent: bool = True):
        if num_blocks < 2 or block_size < 1:
            raise ValueError(f"KVCache needs num_blocks >= 2 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks, self.block_size, self.mla_latent = num_blocks, block_size, mla_latent
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def write(self, layer: int, key_NGD: torch.Tensor, value_NGE: torch.Tensor | None, slots_N: torch.Tensor,
              value_dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Store token i's key/value at flat slot slots_N[i] (block · block_size + offset) of `layer`; returns
        the layer's (keys, values) pools. value_NGE None: the values are keys[..., :value_dim] (MLA latent)."""
        if layer not in self.keys:
            shape = (self.num_blocks, self.block_size)
            self.keys[layer] = key_NGD.new_zeros(shape + tuple(key_NGD.shape[1:]))
            if value_NGE is not None:
                self.values[layer] = value_NGE.new_zeros(shape + tuple(value_NGE.shape[1:]))
        keys = self.keys[layer]
        keys.view(-1, *keys.shape[2:])[slots_N] = key_NGD
        if value_NGE is None:
            return keys, keys[..., :value_dim]
        values = self.values[layer]
        values.view(-1, *values.shape[2:])[slots_N] = value_NGE
        return keys, values

    def copy_blocks(self, src_C: torch.Tensor, dst_C: torch.Tensor) -> None:
        """Block dst_C[i] gets the contents of block src_C[i], in every layer (copy-on-write of shared blocks)."""
        for pool in (*self.keys.values(), *self.values.values()):
            pool[dst_C] = pool[src_C]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys.values(), *self.values.values()))

    @property
    def capacity_tokens(self) -> int:
        """Token positions the pool holds (block 0, the scratch block, included)."""
        return self.num_blocks * self.block_size

    def free(self) -> None:
        self.keys.clear()
        self.values.clear()


@dataclasses.dataclass(frozen=True)
class PrefillChunk:
    """Tokens [start, end) of the flat row are the last end - start of one sequence's first context_len positions;
    its cache blocks are block_ids_K (int64, enough to hold context_len positions)."""

    start: int
    end: int
    context_len: int
    block_ids_K: torch.Tensor


@dataclasses.dataclass
class ForwardContext:
    """Where the N tokens of one generation forward sit (the flat row [1, N]).

    positions_N: int64 [N], each token's position in its sequence. slots_N: int64 [N], the flat cache slot its
    key/value goes to. logit_index_R: int64 [R], the tokens whose logits the model returns. The first
    num_decode tokens are decode rows (one token each), row b attending to keys 0..seq_lens_D[b]-1 of the blocks
    block_table_DM[b] (int32); the rest are prefill chunks. max_positions: the rotary table's length."""

    cache: KVCache
    positions_N: torch.Tensor
    slots_N: torch.Tensor
    logit_index_R: torch.Tensor
    max_positions: int
    num_decode: int = 0
    block_table_DM: torch.Tensor | None = None
    seq_lens_D: torch.Tensor | None = None
    prefill: tuple[PrefillChunk, ...] = ()

    def attend(self, layer: int, query_TBND: torch.Tensor, key_TBGD: torch.Tensor, value_TBGE: torch.Tensor | None,
               softmax_scale: float, value_dim: int | None = None) -> torch.Tensor:
        """Write this forward's keys/values, then attention over each sequence's cached keys. Shapes follow
        Megatron's core attention with B = 1: query [N, 1, H, D] -> [N, 1, H·E]. value_TBGE None (MLA latent):
        values are the first value_dim channels of the keys."""
        keys, values = self.cache.write(layer, key_TBGD[:, 0], None if value_TBGE is None else value_TBGE[:, 0],
                                        self.slots_N, value_dim)
        out_NHE = cached_attention(self, query_TBND[:, 0], keys, values, softmax_scale)
        return out_NHE.reshape(out_NHE.shape[0], 1, -1)


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
