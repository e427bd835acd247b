"""Every built-in preset translates into a valid Megatron config; the tiny one builds and runs."""
import math

import pytest
import torch
from megatron.core.transformer.transformer_config import MLATransformerConfig

from r1_megatron.models import PRESETS, build_model, logits, preset, to_transformer_config
from r1_megatron.runtime import ParallelConfig, ensure_parallel_state, seed_everything


@pytest.mark.parametrize("name", PRESETS)
def test_preset_translates(name):
    config = preset(name)
    tcfg = to_transformer_config(config, ParallelConfig(), torch.bfloat16)
    assert tcfg.num_layers == config.num_layers and tcfg.bf16
    assert isinstance(tcfg, MLATransformerConfig) == (config.mla is not None)


def test_deepseek_v3_671b_numbers():
    """The facts of the released model (docs/r1_reference.md), as Megatron will see them."""
    tcfg = to_transformer_config(preset("deepseek-v3-671b"), ParallelConfig(tp=2, ep=8), torch.bfloat16)
    assert (tcfg.num_moe_experts, tcfg.moe_router_topk, tcfg.moe_router_num_groups, tcfg.moe_router_group_topk) == \
        (256, 8, 8, 4)
    assert tcfg.moe_layer_freq == [0] * 3 + [1] * 58
    assert tcfg.moe_router_score_function == "sigmoid" and tcfg.moe_router_enable_expert_bias
    assert tcfg.moe_router_topk_scaling_factor == 2.5 and tcfg.moe_shared_expert_intermediate_size == 2048
    assert (tcfg.q_lora_rank, tcfg.kv_lora_rank, tcfg.qk_head_dim, tcfg.qk_pos_emb_head_dim) == (1536, 512, 128, 64)
    assert tcfg.rope_type == "yarn" and tcfg.rotary_scaling_factor == 40 and tcfg.mscale_all_dim == 1.0
    assert tcfg.sequence_parallel  # MoE with TP needs SP


def test_tiny_moe_builds_and_predicts_near_uniform():
    ensure_parallel_state()
    seed_everything(0)
    model = build_model(preset("tiny-moe"))
    out = logits(model, torch.randint(0, 64, (2, 5)))
    probs = out.softmax(-1)
    # A freshly initialised model predicts close to uniform: the loss is near ln V.
    nll = -probs.log().mean().item()
    assert out.shape == (2, 5, 64) and abs(nll - math.log(64)) < 0.2
