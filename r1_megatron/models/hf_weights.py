"""Tensor-by-tensor mapping between HF checkpoints (on-disk names) and Megatron-Core parameter names.

Each Megatron tensor is made from one or more HF tensors by an invertible transform, so loading and saving use
the same table. Names are for the whole model (all layers, all experts); the loader resolves them per rank. A rank
that holds a tensor-parallel slice reads only the matching slices of the HF tensors where the transform allows it
(`componentwise`), which covers every split Megatron makes except the MLA kv down-projection of rope-halves
checkpoints (a single small block, read whole and then sliced).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from r1_megatron.models.config import ModelConfig
from r1_megatron.models.hf_config import HFLayoutOptions
from r1_megatron.models.placement import Shard


class Copy:
    """Same tensor on both sides."""

    def componentwise(self, shard) -> bool:
        return True

    def to_megatron(self, hf: list[torch.Tensor]) -> torch.Tensor:
        return hf[0]

    def to_hf(self, megatron: torch.Tensor) -> list[torch.Tensor]:
        return [megatron]


class GateUp:
    """SwiGLU fc1: Megatron stacks [gate; up] rows in one weight, HF keeps gate_proj and up_proj apart.
    A TP rank's fc1 is [gate slice; up slice] (the activation chunks the local output in two)."""

    def componentwise(self, shard) -> bool:
        return shard.dim == 0

    def to_megatron(self, hf):
        return torch.cat(hf, dim=0)

    def to_hf(self, megatron):
        return list(megatron.chunk(2, dim=0))


@dataclass(frozen=True)
class QKVGroups:
    """Megatron's fused linear_qkv holds, per KV group g, its query heads then k_g then v_g (weight or bias).
    TP splits whole groups, so a rank's slice is the same layout over its share of q, k and v."""

    head_dim: int
    heads_per_group: int

    def componentwise(self, shard) -> bool:
        return shard.dim == 0

    def to_megatron(self, hf):
        q, k, v = hf
        tail = q.shape[1:]
        groups = k.shape[0] // self.head_dim
        q = q.reshape(groups, self.heads_per_group * self.head_dim, *tail)
        k = k.reshape(groups, self.head_dim, *tail)
        v = v.reshape(groups, self.head_dim, *tail)
        return torch.cat([q, k, v], dim=1).reshape(-1, *tail)

    def to_hf(self, megatron):
        tail = megatron.shape[1:]
        grouped = megatron.reshape(-1, (self.heads_per_group + 2) * self.head_dim, *tail)
        q, k, v = grouped.split([self.heads_per_group * self.head_dim, self.head_dim, self.head_dim], dim=1)
        return [t.reshape(-1, *tail) for t in (q, k, v)]


@dataclass(frozen=True)
class RopeRows:
    """HF `rope_interleave=False` stores each block's last `rope_dim` rows as two halves; Megatron's MLA rope wants
    interleaved pairs (row 2i <- i, row 2i+1 <- i + rope_dim/2). Blocks are heads (q) or the whole tensor (kv_a)."""

    block_rows: int
    rope_dim: int
    num_blocks: int

    def componentwise(self, shard) -> bool:
        return shard.dim == 0 and self.num_blocks % shard.world == 0

    def _permute(self, t: torch.Tensor, inverse: bool) -> torch.Tensor:
        half = self.rope_dim // 2
        perm = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).reshape(-1)
        if inverse:
            perm = torch.argsort(perm)
        blocks = t.reshape(-1, self.block_rows, *t.shape[1:])
        nope, rope = blocks[:, : self.block_rows - self.rope_dim], blocks[:, self.block_rows - self.rope_dim:]
        return torch.cat([nope, rope[:, perm]], dim=1).reshape(t.shape)

    def to_megatron(self, hf):
        return self._permute(hf[0], inverse=False)

    def to_hf(self, megatron):
        return [self._permute(megatron, inverse=True)]


@dataclass(frozen=True)
class TensorRule:
    megatron: str
    hf: tuple[str, ...]
    transform: object = Copy()

    def read(self, reader, shard) -> torch.Tensor:
        """This rank's Megatron tensor: whole (shard None) or its TP slice, reading as little as possible."""
        if shard is None:
            return self.transform.to_megatron([reader.get(name, self.megatron) for name in self.hf])
        if self.transform.componentwise(shard):
            return self.transform.to_megatron([reader.get(name, self.megatron, shard) for name in self.hf])
        return shard.take(self.read(reader, None))

    def assemble(self, pieces: list[torch.Tensor], dim: int) -> list[torch.Tensor]:
        """The whole HF tensors from the Megatron tensor's TP pieces (in TP-rank order, split along `dim`): the
        inverse of `read`. Where the loader reads slices, each piece maps to slices of the HF tensors (an fc1
        piece is [gate_r; up_r], not a chunk of the whole fc1); otherwise the pieces are chunks of the whole."""
        if len(pieces) == 1:
            return self.transform.to_hf(pieces[0])
        if self.transform.componentwise(Shard(dim, 0, len(pieces))):
            per_piece = [self.transform.to_hf(piece) for piece in pieces]
            return [torch.cat(parts, dim=dim) for parts in zip(*per_piece)]
        return self.transform.to_hf(torch.cat(pieces, dim=dim))


def _mla_rules(config: ModelConfig, layout: HFLayoutOptions, hf: str, meg: str) -> list[TensorRule]:
    mla = config.mla
    q_rows = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    q_transform = (Copy() if layout.rope_interleave
                   else RopeRows(q_rows, mla.qk_rope_head_dim, config.num_attention_heads))
    kv_transform = (Copy() if layout.rope_interleave
                    else RopeRows(mla.kv_lora_rank + mla.qk_rope_head_dim, mla.qk_rope_head_dim, 1))
    rules = [TensorRule(f"{meg}linear_kv_down_proj.weight", (f"{hf}kv_a_proj_with_mqa.weight",), kv_transform),
             TensorRule(f"{meg}kv_layernorm.weight", (f"{hf}kv_a_layernorm.weight",)),
             TensorRule(f"{meg}linear_kv_up_proj.weight", (f"{hf}kv_b_proj.weight",)),
             TensorRule(f"{meg}linear_proj.weight", (f"{hf}o_proj.weight",))]
    if mla.q_lora_rank is None:
        return rules + [TensorRule(f"{meg}linear_q_proj.weight", (f"{hf}q_proj.weight",), q_transform)]
    return rules + [TensorRule(f"{meg}linear_q_down_proj.weight", (f"{hf}q_a_proj.weight",)),
                    TensorRule(f"{meg}q_layernorm.weight", (f"{hf}q_a_layernorm.weight",)),
                    TensorRule(f"{meg}linear_q_up_proj.weight", (f"{hf}q_b_proj.weight",), q_transform)]


def _gqa_rules(config: ModelConfig, hf: str, meg: str) -> list[TensorRule]:
    qkv = QKVGroups(config.head_dim, config.num_attention_heads // config.num_kv_heads)
    rules = [TensorRule(f"{meg}linear_qkv.weight", tuple(f"{hf}{p}_proj.weight" for p in "qkv"), qkv),
             TensorRule(f"{meg}linear_proj.weight", (f"{hf}o_proj.weight",))]
    if config.qkv_bias:
        rules.append(TensorRule(f"{meg}linear_qkv.bias", tuple(f"{hf}{p}_proj.bias" for p in "qkv"), qkv))
    return rules


def _mlp_rules(hf: str, meg: str) -> list[TensorRule]:
    return [TensorRule(f"{meg}linear_fc1.weight", (f"{hf}gate_proj.weight", f"{hf}up_proj.weight"), GateUp()),
            TensorRule(f"{meg}linear_fc2.weight", (f"{hf}down_proj.weight",))]


def _moe_rules(config: ModelConfig, hf: str, meg: str) -> list[TensorRule]:
    rules = [TensorRule(f"{meg}router.weight", (f"{hf}gate.weight",))]
    if config.moe.expert_bias:
        rules.append(TensorRule(f"{meg}router.expert_bias", (f"{hf}gate.e_score_correction_bias",)))
    for e in range(config.moe.num_experts):
        rules += _mlp_rules(f"{hf}experts.{e}.", f"{meg}experts.local_experts.{e}.")
    if config.moe.num_shared_experts:
        rules += _mlp_rules(f"{hf}shared_experts.", f"{meg}shared_experts.")
    return rules


def layer_rules(config: ModelConfig, layout: HFLayoutOptions, layer: int) -> list[TensorRule]:
    hf, meg = f"model.layers.{layer}.", f"decoder.layers.{layer}."
    attention = (_mla_rules(config, layout, hf + "self_attn.", meg + "self_attention.") if config.mla is not None
                 else _gqa_rules(config, hf + "self_attn.", meg + "self_attention."))
    is_moe = config.moe is not None and layer >= config.moe.first_k_dense
    mlp = _moe_rules(config, hf + "mlp.", meg + "mlp.") if is_moe else _mlp_rules(hf + "mlp.", meg + "mlp.")
    norms = [TensorRule(f"{meg}input_layernorm.weight", (f"{hf}input_layernorm.weight",)),
             TensorRule(f"{meg}pre_mlp_layernorm.weight", (f"{hf}post_attention_layernorm.weight",))]
    return norms + attention + mlp


def weight_rules(config: ModelConfig, layout: HFLayoutOptions | None = None) -> list[TensorRule]:
    """Every tensor of the whole model, Megatron name <- HF names."""
    layout = layout or HFLayoutOptions()
    rules = [TensorRule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",))]
    for layer in range(config.num_layers):
        rules += layer_rules(config, layout, layer)
    rules.append(TensorRule("decoder.final_layernorm.weight", ("model.norm.weight",)))
    if not config.tie_word_embeddings:
        rules.append(TensorRule("output_layer.weight", ("lm_head.weight",)))
    return rules


def sequence_classification_rules(config: ModelConfig, layout: HFLayoutOptions | None = None) -> list[TensorRule]:
    """A *ForSequenceClassification checkpoint: the body's tensors, and HF's scalar head `score.weight` [1, hidden]
    as the reward model's output layer (models/reward_model.py) in place of the lm_head."""
    body = [rule for rule in weight_rules(config, layout) if rule.megatron != "output_layer.weight"]
    return body + [TensorRule("output_layer.weight", ("score.weight",))]
