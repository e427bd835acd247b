"""Built-in model configurations: a tiny MoE for CPU runs and the DeepSeek-V3 / R1-distillation families.

Numbers follow each model's released config.json. The DeepSeek-V3 MTP module is left out (mtp_layers=0), as in
transformers; the real checkpoints load with load_hf(..., drop_mtp=True).
"""
from __future__ import annotations

import dataclasses

from r1_megatron.models.config import MLAConfig, ModelConfig, MoEConfig, RopeConfig, RopeScaling


def tiny_moe() -> ModelConfig:
    """DeepSeek-V3 architecture in miniature (MLA, a dense first layer, shared + routed experts, group routing):
    fast enough for a 2-core CPU."""
    return ModelConfig(
        architecture="deepseek_v3", vocab_size=64, hidden_size=64, num_layers=2, num_attention_heads=4,
        ffn_hidden_size=128, max_position_embeddings=128, rms_norm_eps=1e-6,
        mla=MLAConfig(q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16),
        moe=MoEConfig(num_experts=4, top_k=2, ffn_hidden_size=64, num_shared_experts=1, first_k_dense=1,
                      num_groups=2, group_topk=1, routed_scaling_factor=2.5))


def demo_moe() -> ModelConfig:
    """The CPU GRPO demo's policy: tiny-moe widened to hidden 96 (at 64 the MoE model learns 2-digit addition
    by SFT about 3x slower) with the 20-token vocabulary of the synthetic addition task."""
    return dataclasses.replace(tiny_moe(), hidden_size=96, vocab_size=20)


def deepseek_v3_671b() -> ModelConfig:
    return ModelConfig(
        architecture="deepseek_v3", vocab_size=129280, hidden_size=7168, num_layers=61, num_attention_heads=128,
        ffn_hidden_size=18432, max_position_embeddings=163840, rms_norm_eps=1e-6,
        rope=RopeConfig(theta=10000.0, scaling=RopeScaling.YARN, factor=40.0, original_max_position_embeddings=4096,
                        beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0),
        mla=MLAConfig(q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128),
        moe=MoEConfig(num_experts=256, top_k=8, ffn_hidden_size=2048, num_shared_experts=1, first_k_dense=3,
                      num_groups=8, group_topk=4, routed_scaling_factor=2.5, aux_loss_coeff=1e-4))


def moonlight_16b_a3b() -> ModelConfig:
    """Moonshot's Moonlight-16B-A3B: DeepSeek-V3 architecture without q-LoRA or expert groups."""
    return ModelConfig(
        architecture="deepseek_v3", vocab_size=163840, hidden_size=2048, num_layers=27, num_attention_heads=16,
        ffn_hidden_size=11264, max_position_embeddings=8192, rms_norm_eps=1e-5, rope=RopeConfig(theta=50000.0),
        mla=MLAConfig(q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128),
        moe=MoEConfig(num_experts=64, top_k=6, ffn_hidden_size=1408, num_shared_experts=2, first_k_dense=1,
                      routed_scaling_factor=2.446, aux_loss_coeff=1e-3))


def _qwen2(vocab, hidden, layers, heads, kv_heads, ffn, max_pos, theta, eps, tied) -> ModelConfig:
    return ModelConfig(architecture="qwen2", vocab_size=vocab, hidden_size=hidden, num_layers=layers,
                       num_attention_heads=heads, num_kv_heads=kv_heads, ffn_hidden_size=ffn,
                       max_position_embeddings=max_pos, rms_norm_eps=eps, qkv_bias=True, tie_word_embeddings=tied,
                       rope=RopeConfig(theta=theta))


def _llama3(hidden, layers, heads, ffn) -> ModelConfig:
    return ModelConfig(architecture="llama", vocab_size=128256, hidden_size=hidden, num_layers=layers,
                       num_attention_heads=heads, num_kv_heads=8, ffn_hidden_size=ffn, max_position_embeddings=131072,
                       rms_norm_eps=1e-5, rope=RopeConfig(theta=500000.0, scaling=RopeScaling.LLAMA3, factor=8.0,
                                                          original_max_position_embeddings=8192))


PRESETS = {
    "tiny-dense": lambda: _qwen2(128, 64, 2, 4, 2, 128, 512, 10000.0, 1e-6, False),  # the CPU SFT demo's student
    "tiny-moe": tiny_moe,
    "demo-moe": demo_moe,
    "deepseek-v3-671b": deepseek_v3_671b,
    "moonlight-16b-a3b": moonlight_16b_a3b,
    "qwen2.5-math-1.5b": lambda: _qwen2(151936, 1536, 28, 12, 2, 8960, 4096, 10000.0, 1e-6, True),
    "qwen2.5-math-7b": lambda: _qwen2(152064, 3584, 28, 28, 4, 18944, 4096, 10000.0, 1e-6, False),
    "qwen2.5-14b": lambda: _qwen2(152064, 5120, 48, 40, 8, 13824, 32768, 1000000.0, 1e-5, False),
    "qwen2.5-32b": lambda: _qwen2(152064, 5120, 64, 40, 8, 27648, 32768, 1000000.0, 1e-5, False),
    "llama-3.1-8b": lambda: _llama3(4096, 32, 32, 14336),
    "llama-3.3-70b": lambda: _llama3(8192, 80, 64, 28672),
}


def preset(name: str) -> ModelConfig:
    """A fresh ModelConfig for a built-in preset name; ValueError lists the known names."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]()
