"""Settings of the engine's paged KV cache, and the cache bytes per token of a model on this rank."""
from __future__ import annotations

import dataclasses

import torch

from r1_megatron.models.config import ModelConfig

from .block_manager import SCRATCH_BLOCKS


@dataclasses.dataclass(frozen=True)
class CacheConfig:
    """block_size: token positions per cache block. Size of the pool, at most one of:
      num_blocks: blocks (block 0 is a scratch block);
      memory_fraction: that fraction of the device memory free when the engine is built (CUDA; on CPU of the
        available system memory);
      neither: room for max_batch_size sequences of max_seq_len each, so no sequence is ever preempted.
    max_tokens_per_step: tokens one forward computes at most (decode rows + prefill chunks); longer prompts are
      prefilled in chunks. None: max(8192, max_batch_size).
    mla_latent: MLA models cache the compressed latent and the shared rope key per token and decode in the
      absorbed form (DeepSeek-V2 §2.1.2) instead of caching expanded per-head keys and values."""

    block_size: int = 16
    num_blocks: int | None = None
    memory_fraction: float | None = None
    max_tokens_per_step: int | None = None
    mla_latent: bool = True

    def __post_init__(self):
        for name in ("block_size", "num_blocks", "max_tokens_per_step"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"cache.{name} must be an int >= 1, got {value!r}")
        if self.memory_fraction is not None and not 0 < self.memory_fraction <= 1:
            raise ValueError(f"cache.memory_fraction must be in (0, 1], got {self.memory_fraction!r}")
        if self.num_blocks is not None and self.memory_fraction is not None:
            raise ValueError("cache: set num_blocks or memory_fraction, not both")

    def num_blocks_for(self, model, max_batch_size: int, max_seq_len: int) -> int:
        """The pool's block count; refuses a pool that cannot hold one sequence of max_seq_len."""
        per_seq = -(-max_seq_len // self.block_size)
        if self.num_blocks is not None:
            blocks = self.num_blocks
        elif self.memory_fraction is not None:
            block_bytes = self.block_size * kv_bytes_per_token(model, self.mla_latent)
            blocks = int(self.memory_fraction * _free_memory(next(model.parameters()).device) // block_bytes)
        else:
            blocks = max_batch_size * per_seq + SCRATCH_BLOCKS
        if blocks - SCRATCH_BLOCKS < per_seq:
            raise ValueError(f"cache: {blocks} blocks of {self.block_size} tokens cannot hold one sequence of "
                             f"max_seq_len={max_seq_len} ({per_seq} blocks + {SCRATCH_BLOCKS} scratch); raise "
                             "cache.num_blocks / cache.memory_fraction or lower max_seq_len")
        return blocks

    def tokens_per_step(self, max_batch_size: int) -> int:
        return self.max_tokens_per_step or max(8192, max_batch_size)


def kv_bytes_per_token(model, mla_latent: bool = True) -> int:
    """Cache bytes one token takes on this rank, summed over this rank's layers (this pipeline stage, this
    tensor-parallel shard of the heads), in the dtype of the model's attention weights."""
    layers = model.decoder.layers
    attention = layers[0].self_attention
    latent = mla_latent and getattr(attention, "caches_latent", False)
    return len(layers) * layer_kv_bytes_per_token(model.model_config, attention.config.tensor_model_parallel_size,
                                                  next(attention.parameters()).element_size(), latent)


def layer_kv_bytes_per_token(model: ModelConfig, tp: int, element_size: int, mla_latent: bool) -> int:
    """Cache bytes of one token in one attention layer on one of `tp` tensor-parallel ranks:
      MLA latent (models/mla.py):  (kv_lora_rank + qk_rope_head_dim) · element_size, the same on every TP rank
                                   (every head reads the whole latent, so it is replicated, not split);
      MLA expanded:                heads / tp · (qk_nope + qk_rope + v_head_dim) · element_size (keys + values);
      MHA / GQA:                   2 · num_kv_heads / tp · head_dim · element_size."""
    mla = model.mla
    if mla is None:
        return 2 * (model.num_kv_heads // tp) * model.head_dim * element_size
    if mla_latent:
        return (mla.kv_lora_rank + mla.qk_rope_head_dim) * element_size
    head_dims = mla.qk_nope_head_dim + mla.qk_rope_head_dim + mla.v_head_dim
    return model.num_attention_heads // tp * head_dims * element_size


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        available = next(line for line in f if line.startswith("MemAvailable:"))
    return int(available.split()[1]) * 1024
