"""Typed model configuration and its one translation into Megatron-Core's TransformerConfig.

`ModelConfig` speaks the architecture's own terms (as in HF config.json); `to_transformer_config` is the only
place that knows Megatron's field names, including the traps found while matching HF logits (MLA latent norms need
qk_layernorm, plain-rope MLA must not get YaRN's mscale, RMSNorm eps, rope_theta lives on GPTModel for dense models).
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from r1_megatron.runtime import ParallelConfig


class Architecture(str, enum.Enum):
    DEEPSEEK_V3 = "deepseek_v3"
    QWEN2 = "qwen2"
    LLAMA = "llama"


class RopeScaling(str, enum.Enum):
    NONE = "none"
    YARN = "yarn"
    LLAMA3 = "llama3"


class ScoreFunction(str, enum.Enum):
    SIGMOID = "sigmoid"
    SOFTMAX = "softmax"


ROUTER_DTYPES = ("fp32", "fp64")  # Megatron's moe_router_dtype values we allow (bf16 routing flips experts)


def _positive(owner: str, **values) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


@dataclass
class RopeConfig:
    """Rotary embedding: base theta and optional YaRN (DeepSeek-V3) or Llama-3 frequency scaling."""

    theta: float = 10000.0
    scaling: RopeScaling = RopeScaling.NONE
    factor: float = 1.0
    original_max_position_embeddings: int = 4096
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    mscale: float = 1.0  # yarn
    mscale_all_dim: float = 0.0  # yarn
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3

    def __post_init__(self):
        self.scaling = RopeScaling(self.scaling)
        if self.theta <= 0:
            raise ValueError(f"RopeConfig.theta must be > 0, got {self.theta}")
        if self.scaling is not RopeScaling.NONE and self.factor < 1:
            raise ValueError(f"RopeConfig.factor must be >= 1 for {self.scaling.value} scaling, got {self.factor}")


@dataclass
class MLAConfig:
    """Multi-head latent attention (DeepSeek-V2/V3). q_lora_rank None projects queries directly."""

    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None
    # HF builds q_a_layernorm/kv_a_layernorm with eps=1e-6 regardless of rms_norm_eps.
    latent_norm_eps: float = 1e-6

    def __post_init__(self):
        _positive("MLAConfig", kv_lora_rank=self.kv_lora_rank, qk_nope_head_dim=self.qk_nope_head_dim,
                  qk_rope_head_dim=self.qk_rope_head_dim, v_head_dim=self.v_head_dim)
        if self.q_lora_rank is not None:
            _positive("MLAConfig", q_lora_rank=self.q_lora_rank)
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"MLAConfig.qk_rope_head_dim must be even, got {self.qk_rope_head_dim}")


@dataclass
class MoEConfig:
    """DeepSeek-style MoE: routed + shared experts, aux-loss-free expert bias, group-limited routing."""

    num_experts: int
    top_k: int
    ffn_hidden_size: int
    num_shared_experts: int = 0
    first_k_dense: int = 0
    score_function: ScoreFunction = ScoreFunction.SIGMOID
    expert_bias: bool = True  # aux-loss-free load balancing (selection uses score + bias)
    bias_update_rate: float = 1e-3
    num_groups: int | None = None  # group-limited routing: keep the best `group_topk` of `num_groups` groups
    group_topk: int | None = None
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    aux_loss_coeff: float = 0.0  # sequence-wise auxiliary balance loss (DeepSeek-V3 used 1e-4)
    token_dispatcher: str = "alltoall"
    router_dtype: str = "fp32"  # the router's logits, scores and top-k: fp32, or fp64 (RL: grpo/router_rl.py)

    def __post_init__(self):
        self.score_function = ScoreFunction(self.score_function)
        _positive("MoEConfig", num_experts=self.num_experts, top_k=self.top_k, ffn_hidden_size=self.ffn_hidden_size)
        if self.top_k > self.num_experts:
            raise ValueError(f"MoEConfig.top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if (self.num_groups is None) != (self.group_topk is None):
            raise ValueError(f"MoEConfig.num_groups={self.num_groups} and group_topk={self.group_topk} go together")
        if self.num_groups is not None:
            if self.num_experts % self.num_groups or self.group_topk > self.num_groups:
                raise ValueError(f"MoEConfig: num_experts={self.num_experts}, num_groups={self.num_groups}, "
                                 f"group_topk={self.group_topk} do not form a valid group-limited routing")
        if not self.norm_topk_prob:
            # Megatron's sigmoid routing always normalises the top-k weights when top_k > 1.
            raise ValueError("MoEConfig.norm_topk_prob=False is not supported (Megatron always normalises)")
        if self.top_k == 1 and self.score_function is ScoreFunction.SIGMOID:
            raise ValueError("MoEConfig.top_k=1 with sigmoid scores is not supported: Megatron skips the "
                             "normalisation that HF applies")
        if self.router_dtype not in ROUTER_DTYPES:
            raise ValueError(f"MoEConfig.router_dtype must be one of {', '.join(ROUTER_DTYPES)}, got "
                             f"{self.router_dtype!r}")
        if self.token_dispatcher not in ("alltoall", "allgather"):
            raise ValueError(f"MoEConfig.token_dispatcher must be 'alltoall' or 'allgather', "
                             f"got {self.token_dispatcher!r}")


@dataclass
class ModelConfig:
    """One decoder-only model: DeepSeek-V3 (MLA + MoE), Qwen2 or Llama. Field names follow HF config.json."""

    architecture: Architecture
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    ffn_hidden_size: int  # dense layers' MLP width
    num_kv_heads: int | None = None  # GQA groups; None = num_attention_heads
    head_dim: int | None = None  # None = hidden_size // num_attention_heads
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False
    tie_word_embeddings: bool = False
    rope: RopeConfig = field(default_factory=RopeConfig)
    mla: MLAConfig | None = None
    moe: MoEConfig | None = None
    mtp_layers: int = 0  # multi-token prediction modules (not implemented: must be 0)

    def __post_init__(self):
        self.architecture = Architecture(self.architecture)
        _positive("ModelConfig", vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                  num_layers=self.num_layers, num_attention_heads=self.num_attention_heads,
                  ffn_hidden_size=self.ffn_hidden_size, max_position_embeddings=self.max_position_embeddings)
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_kv_heads:
            raise ValueError(f"ModelConfig.num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")
        if self.mtp_layers:
            raise ValueError(f"ModelConfig.mtp_layers={self.mtp_layers}: multi-token prediction (MTP) is not "
                             "implemented; use mtp_layers=0 (load_hf(..., drop_mtp=True) drops the MTP weights, "
                             "as transformers does)")
        is_dsv3 = self.architecture is Architecture.DEEPSEEK_V3
        if is_dsv3 != (self.mla is not None):
            raise ValueError(f"ModelConfig: architecture {self.architecture.value} "
                             f"{'needs' if is_dsv3 else 'does not take'} an MLA config")
        if self.moe is not None and not is_dsv3:
            raise ValueError(f"ModelConfig: MoE layers are only supported for deepseek_v3, not {self.architecture.value}")
        if self.moe is not None and not 0 <= self.moe.first_k_dense <= self.num_layers:
            raise ValueError(f"MoEConfig.first_k_dense={self.moe.first_k_dense} outside 0..{self.num_layers}")
        if self.rope.scaling is RopeScaling.YARN and not is_dsv3:
            raise ValueError(f"ModelConfig: YaRN rope scaling is only supported with MLA (deepseek_v3), "
                             f"not {self.architecture.value}")
        if self.rope.scaling is RopeScaling.LLAMA3 and is_dsv3:
            raise ValueError("ModelConfig: llama3 rope scaling is not valid for deepseek_v3")

    def to_dict(self) -> dict:
        """JSON-able form (enums as their values), e.g. for checkpoint metadata."""
        return json_ready(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        data = dict(data)
        data["rope"] = RopeConfig(**data.get("rope", {}))
        data["mla"] = MLAConfig(**data["mla"]) if data.get("mla") else None
        data["moe"] = MoEConfig(**data["moe"]) if data.get("moe") else None
        return cls(**data)

    @property
    def has_moe(self) -> bool:
        return self.moe is not None and self.moe.first_k_dense < self.num_layers

    @property
    def needs_sequence_parallel(self) -> bool:
        """Tensor parallelism of MoE and MLA layers is only correct with sequence parallelism."""
        return self.has_moe or self.mla is not None


def json_ready(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    return value


def _common_kwargs(model: ModelConfig, parallel: ParallelConfig, dtype: torch.dtype) -> dict:
    on_gpu = torch.cuda.is_available()
    return dict(
        num_layers=model.num_layers, hidden_size=model.hidden_size, num_attention_heads=model.num_attention_heads,
        ffn_hidden_size=model.ffn_hidden_size, layernorm_epsilon=model.rms_norm_eps, normalization="RMSNorm",
        gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False, add_qkv_bias=model.qkv_bias,
        attention_dropout=0.0, hidden_dropout=0.0,
        tensor_model_parallel_size=parallel.tp, pipeline_model_parallel_size=parallel.pp,
        # A dense model on an expert-parallel layout simply uses those ranks as data parallel.
        expert_model_parallel_size=parallel.ep if model.has_moe else 1,
        expert_tensor_parallel_size=parallel.expert_tp if model.has_moe else None,
        sequence_parallel=parallel.sequence_parallel(model.needs_sequence_parallel),
        params_dtype=dtype, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, pipeline_dtype=dtype,
        # Losses return (sum, unit count); gradients are divided by the global count (r1_megatron.training.step).
        calculate_per_token_loss=True,
        # CPU init is identical on every layout (the weights are made whole, then split), which cross-layout
        # tests rely on; on GPU, init on the device.
        use_cpu_initialization=not on_gpu,
        # These fusions need apex/TransformerEngine kernels or CUDA; the elementwise jit fusions are fine on GPU.
        bias_activation_fusion=on_gpu, bias_dropout_fusion=on_gpu, masked_softmax_fusion=False,
        apply_rope_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False,
    )


def _mla_kwargs(model: ModelConfig) -> dict:
    mla, rope = model.mla, model.rope
    yarn = rope.scaling is RopeScaling.YARN
    return dict(
        multi_latent_attention=True, qk_layernorm=True,  # without qk_layernorm the latent norms are IdentityOp
        q_lora_rank=mla.q_lora_rank, kv_lora_rank=mla.kv_lora_rank, qk_head_dim=mla.qk_nope_head_dim,
        qk_pos_emb_head_dim=mla.qk_rope_head_dim, v_head_dim=mla.v_head_dim, rotary_base=rope.theta,
        # MLA's softmax scale always includes yarn's mscale(rotary_scaling_factor, mscale_all_dim); plain rope
        # must set them to the identity or the scale is off (HF parity trap).
        rope_type="yarn" if yarn else "rope", rotary_scaling_factor=rope.factor if yarn else 1.0,
        original_max_position_embeddings=rope.original_max_position_embeddings,
        beta_fast=rope.beta_fast, beta_slow=rope.beta_slow,
        mscale=rope.mscale if yarn else 1.0, mscale_all_dim=rope.mscale_all_dim if yarn else 0.0,
    )


def _moe_kwargs(model: ModelConfig) -> dict:
    moe = model.moe
    dense = moe.first_k_dense
    return dict(
        num_moe_experts=moe.num_experts, moe_router_topk=moe.top_k, moe_ffn_hidden_size=moe.ffn_hidden_size,
        moe_shared_expert_intermediate_size=(moe.ffn_hidden_size * moe.num_shared_experts) or None,
        moe_layer_freq=[0] * dense + [1] * (model.num_layers - dense),
        moe_router_score_function=moe.score_function.value, moe_router_enable_expert_bias=moe.expert_bias,
        moe_router_bias_update_rate=moe.bias_update_rate,
        moe_router_num_groups=moe.num_groups, moe_router_group_topk=moe.group_topk,
        moe_router_topk_scaling_factor=moe.routed_scaling_factor,
        moe_router_dtype=moe.router_dtype, moe_grouped_gemm=False, moe_token_dispatcher_type=moe.token_dispatcher,
        moe_router_load_balancing_type="seq_aux_loss" if moe.aux_loss_coeff > 0 else "none",
        moe_aux_loss_coeff=moe.aux_loss_coeff,
    )


def to_transformer_config(model: ModelConfig, parallel: ParallelConfig, dtype: torch.dtype = torch.float32):
    """The single translation ModelConfig -> Megatron TransformerConfig (MLATransformerConfig for DeepSeek-V3)."""
    from megatron.core.transformer.transformer_config import MLATransformerConfig, TransformerConfig

    kwargs = _common_kwargs(model, parallel, dtype)
    if model.moe is not None:
        kwargs.update(_moe_kwargs(model))
    if model.mla is not None:
        return MLATransformerConfig(**kwargs, **_mla_kwargs(model))
    return TransformerConfig(**kwargs, num_query_groups=model.num_kv_heads, kv_channels=model.head_dim)
