"""HF config.json <-> ModelConfig for DeepseekV3ForCausalLM, Qwen2ForCausalLM and LlamaForCausalLM, and (read only)
the reward models Qwen2ForSequenceClassification and LlamaForSequenceClassification.

Reads both the transformers-4 / official layout (`rope_theta` + `rope_scaling`) and transformers-5's
`rope_parameters`; writes the official layout, which every transformers version loads. Anything the model stack
would silently get wrong (another activation, biases, sliding windows, V2-style softmax routing, MTP) is an error
naming the file and the field.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from r1_megatron.models.config import (
    Architecture,
    MLAConfig,
    ModelConfig,
    MoEConfig,
    RopeConfig,
    RopeScaling,
    ScoreFunction,
)

HF_ARCHITECTURES = {
    "DeepseekV3ForCausalLM": Architecture.DEEPSEEK_V3,
    "Qwen2ForCausalLM": Architecture.QWEN2,
    "LlamaForCausalLM": Architecture.LLAMA,
}
# Reward models: the same body, HF's `score` head [num_labels, hidden] instead of the lm_head (models/reward_model.py)
SEQUENCE_CLASSIFICATION_ARCHITECTURES = {
    "Qwen2ForSequenceClassification": Architecture.QWEN2,
    "LlamaForSequenceClassification": Architecture.LLAMA,
}
_MODEL_TYPES = {Architecture.DEEPSEEK_V3: "deepseek_v3", Architecture.QWEN2: "qwen2", Architecture.LLAMA: "llama"}
_ROPE_TYPES = {None: RopeScaling.NONE, "default": RopeScaling.NONE, "yarn": RopeScaling.YARN,
               "llama3": RopeScaling.LLAMA3}


class HFConfigError(ValueError):
    """A config.json the model stack cannot represent faithfully; the message names the file and field."""


@dataclass
class HFLayoutOptions:
    """Facts about the checkpoint's tensor layout that are not part of the model itself."""

    rope_interleave: bool = True  # DeepSeek-V3: False stores rope dims as two halves instead of pairs
    fp8_block_size: tuple[int, int] | None = None  # official DeepSeek-V3 FP8 weights with block scales


class _Fields:
    """Reads config.json fields with errors that name the file and the field."""

    def __init__(self, raw: dict, file: Path):
        self.raw, self.file = raw, file

    def error(self, field: str, why: str) -> HFConfigError:
        value = self.raw.get(field, "<missing>")
        return HFConfigError(f"{self.file}: field '{field}' = {value!r}: {why}")

    def need(self, field: str):
        if self.raw.get(field) is None:
            raise HFConfigError(f"{self.file}: required field '{field}' is missing")
        return self.raw[field]

    def get(self, field: str, default=None):
        value = self.raw.get(field)
        return default if value is None else value

    def expect(self, field: str, allowed, default, why: str) -> None:
        if self.get(field, default) not in allowed:
            raise self.error(field, why)


def _rope(f: _Fields) -> RopeConfig:
    params = f.raw.get("rope_parameters") or {}
    scaling = f.raw.get("rope_scaling") or {}
    merged = {**scaling, **params}
    field = "rope_parameters" if params else "rope_scaling"
    rope_type = merged.get("rope_type", merged.get("type"))
    if rope_type not in _ROPE_TYPES:
        raise f.error(field, f"rope type {rope_type!r} is not supported (supported: default, yarn, llama3)")
    theta = merged.get("rope_theta", f.get("rope_theta", 10000.0))
    kwargs = {k: merged[k] for k in ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
                                     "mscale", "mscale_all_dim", "low_freq_factor", "high_freq_factor")
              if merged.get(k) is not None}
    scaling_kind = _ROPE_TYPES[rope_type]
    if scaling_kind is RopeScaling.YARN and (merged.get("attention_factor") is not None
                                            or (not merged.get("mscale_all_dim") and merged.get("mscale", 1) != 1)):
        # Without mscale_all_dim, HF uses attention_factor = mscale(factor) and ignores `mscale`, while Megatron's
        # MLA uses mscale(factor, mscale): they agree only for mscale == 1.
        raise f.error(field, "YaRN with an explicit attention_factor, or mscale != 1 without mscale_all_dim, "
                             "is not supported")
    try:
        return RopeConfig(theta=float(theta), scaling=scaling_kind, **kwargs)
    except ValueError as exc:
        raise f.error(field, str(exc)) from None


def _check_common(f: _Fields) -> None:
    f.expect("hidden_act", {"silu"}, "silu", "only SiLU-gated MLPs are supported")
    f.expect("mlp_bias", {False}, False, "MLP biases are not supported")
    f.expect("attention_dropout", {0, 0.0}, 0.0, "attention dropout must be 0 for RL training")
    quant = f.raw.get("quantization_config")
    if quant and quant.get("quant_method") != "fp8":
        raise f.error("quantization_config", "only DeepSeek-V3's block-scaled fp8 weights can be loaded")


def _moe(f: _Fields) -> MoEConfig:
    f.expect("topk_method", {"noaux_tc"}, "noaux_tc", "only DeepSeek-V3's aux-loss-free routing (noaux_tc) is supported")
    f.expect("scoring_func", {"sigmoid"}, "sigmoid", "only sigmoid expert scores are supported")
    f.expect("moe_layer_freq", {1}, 1, "only every-layer MoE after first_k_dense_replace is supported")
    f.expect("norm_topk_prob", {True}, True, "Megatron always normalises the selected experts' weights")
    groups = f.get("n_group", 1)
    return MoEConfig(
        num_experts=f.need("n_routed_experts"), top_k=f.need("num_experts_per_tok"),
        ffn_hidden_size=f.need("moe_intermediate_size"), num_shared_experts=f.get("n_shared_experts", 0),
        first_k_dense=f.get("first_k_dense_replace", 0), score_function=ScoreFunction.SIGMOID,
        num_groups=groups if groups > 1 else None, group_topk=f.need("topk_group") if groups > 1 else None,
        routed_scaling_factor=float(f.get("routed_scaling_factor", 1.0)))


def _deepseek_v3(f: _Fields, drop_mtp: bool) -> dict:
    f.expect("attention_bias", {False}, False, "attention biases are not supported")
    if f.get("num_nextn_predict_layers", 0) and not drop_mtp:
        raise f.error("num_nextn_predict_layers", "multi-token prediction (MTP) is not implemented; leave the MTP "
                                                  "layers out as transformers does: model.drop_mtp=true in a run "
                                                  "config, load_hf(..., drop_mtp=True) in Python")
    mla = MLAConfig(q_lora_rank=f.get("q_lora_rank"), kv_lora_rank=f.need("kv_lora_rank"),
                    qk_nope_head_dim=f.need("qk_nope_head_dim"), qk_rope_head_dim=f.need("qk_rope_head_dim"),
                    v_head_dim=f.need("v_head_dim"))
    return dict(mla=mla, moe=_moe(f), num_kv_heads=None, head_dim=None)


def _qwen2(f: _Fields) -> dict:
    f.expect("use_sliding_window", {False}, False, "sliding-window attention is not supported")
    return dict(qkv_bias=True)


def _llama(f: _Fields) -> dict:
    f.expect("attention_bias", {False}, False, "attention biases are not supported")
    return dict(qkv_bias=False)


def model_config_from_hf(raw: dict, file: Path | str = "config.json", *, drop_mtp: bool = False,
                         architectures: dict[str, Architecture] = HF_ARCHITECTURES):
    """(ModelConfig, HFLayoutOptions) from a parsed config.json; HFConfigError names the file and field.
    `architectures`: the HF class names accepted (the causal LMs, or SEQUENCE_CLASSIFICATION_ARCHITECTURES)."""
    f = _Fields(raw, Path(file))
    archs = f.raw.get("architectures") or []
    if len(archs) != 1 or archs[0] not in architectures:
        raise f.error("architectures", f"unknown architecture; supported: {', '.join(architectures)}")
    arch = architectures[archs[0]]
    _check_common(f)
    specific = {Architecture.DEEPSEEK_V3: lambda: _deepseek_v3(f, drop_mtp),
                Architecture.QWEN2: lambda: _qwen2(f), Architecture.LLAMA: lambda: _llama(f)}[arch]()
    common = dict(num_kv_heads=f.get("num_key_value_heads"), head_dim=f.get("head_dim"))
    try:
        config = ModelConfig(
            architecture=arch, vocab_size=f.need("vocab_size"), hidden_size=f.need("hidden_size"),
            num_layers=f.need("num_hidden_layers"), num_attention_heads=f.need("num_attention_heads"),
            ffn_hidden_size=f.need("intermediate_size"),
            max_position_embeddings=f.get("max_position_embeddings", 4096), rms_norm_eps=float(f.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(f.get("tie_word_embeddings", False)), rope=_rope(f), **{**common, **specific})
    except ValueError as exc:
        if isinstance(exc, HFConfigError):
            raise
        raise HFConfigError(f"{file}: {exc}") from None
    quant = f.raw.get("quantization_config") or {}
    block = quant.get("weight_block_size")
    return config, HFLayoutOptions(rope_interleave=bool(f.get("rope_interleave", True)),
                                   fp8_block_size=tuple(block) if block else None)


def _read_json(directory: Path | str) -> tuple[dict, Path]:
    file = Path(directory) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no config.json in the HF checkpoint directory {directory}")
    try:
        return json.loads(file.read_text()), file
    except json.JSONDecodeError as exc:
        raise HFConfigError(f"{file}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def read_hf_config(directory: Path | str, *, drop_mtp: bool = False):
    """Parse `directory/config.json`; errors name the file (and the field or JSON position)."""
    raw, file = _read_json(directory)
    return model_config_from_hf(raw, file, drop_mtp=drop_mtp)


@dataclass(frozen=True)
class RewardHead:
    """What the scalar head of a *ForSequenceClassification checkpoint needs beyond the body's ModelConfig."""

    pad_token_id: int | None  # transformers pools at the last token that is not this one (None: the last token)


def read_reward_config(directory: Path | str):
    """(ModelConfig, HFLayoutOptions, RewardHead) of a Qwen2/Llama *ForSequenceClassification directory.

    A reward model has exactly one output: transformers' num_labels is len(id2label) when config.json has it, else
    `num_labels`, else its default 2. The body is never tied to an lm_head (the checkpoint has none), whatever
    `tie_word_embeddings` says.
    """
    raw, file = _read_json(directory)
    config, layout = model_config_from_hf(raw, file, architectures=SEQUENCE_CLASSIFICATION_ARCHITECTURES)
    f = _Fields(raw, file)
    num_labels = len(raw["id2label"]) if raw.get("id2label") else f.get("num_labels", 2)
    if num_labels != 1:
        field = "id2label" if raw.get("id2label") else "num_labels"
        raise f.error(field, f"a reward model has one output (num_labels 1), this checkpoint has {num_labels}")
    pad = f.get("pad_token_id")
    if pad is not None and not 0 <= pad < config.vocab_size:
        raise f.error("pad_token_id", f"must be a token id in [0, vocab_size={config.vocab_size})")
    return dataclasses.replace(config, tie_word_embeddings=False), layout, RewardHead(pad_token_id=pad)


def _rope_to_hf(rope: RopeConfig) -> dict | None:
    if rope.scaling is RopeScaling.NONE:
        return None
    if rope.scaling is RopeScaling.YARN:
        return dict(type="yarn", rope_type="yarn", factor=rope.factor, beta_fast=rope.beta_fast,
                    beta_slow=rope.beta_slow, mscale=rope.mscale, mscale_all_dim=rope.mscale_all_dim,
                    original_max_position_embeddings=rope.original_max_position_embeddings)
    return dict(rope_type="llama3", factor=rope.factor, low_freq_factor=rope.low_freq_factor,
                high_freq_factor=rope.high_freq_factor,
                original_max_position_embeddings=rope.original_max_position_embeddings)


def _deepseek_v3_to_hf(config: ModelConfig) -> dict:
    mla, moe = config.mla, config.moe
    return dict(
        q_lora_rank=mla.q_lora_rank, kv_lora_rank=mla.kv_lora_rank, qk_nope_head_dim=mla.qk_nope_head_dim,
        qk_rope_head_dim=mla.qk_rope_head_dim, v_head_dim=mla.v_head_dim, rope_interleave=True,
        n_routed_experts=moe.num_experts, num_experts_per_tok=moe.top_k, moe_intermediate_size=moe.ffn_hidden_size,
        n_shared_experts=moe.num_shared_experts, first_k_dense_replace=moe.first_k_dense,
        n_group=moe.num_groups or 1, topk_group=moe.group_topk or 1, routed_scaling_factor=moe.routed_scaling_factor,
        norm_topk_prob=moe.norm_topk_prob, scoring_func=moe.score_function.value, topk_method="noaux_tc",
        num_nextn_predict_layers=0, attention_bias=False, num_key_value_heads=config.num_attention_heads)


def model_config_to_hf(config: ModelConfig, dtype_name: str) -> dict:
    """config.json content for `config` in the official (transformers-4 compatible) layout."""
    arch_name = next(name for name, arch in HF_ARCHITECTURES.items() if arch is config.architecture)
    out = dict(
        architectures=[arch_name], model_type=_MODEL_TYPES[config.architecture], vocab_size=config.vocab_size,
        hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.ffn_hidden_size,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=config.tie_word_embeddings, hidden_act="silu", rope_theta=config.rope.theta,
        rope_scaling=_rope_to_hf(config.rope), torch_dtype=dtype_name)
    if config.architecture is Architecture.DEEPSEEK_V3:
        out.update(_deepseek_v3_to_hf(config))
    else:
        out.update(num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim)
        out.update(dict(use_sliding_window=False) if config.architecture is Architecture.QWEN2
                   else dict(attention_bias=False, mlp_bias=False))
    return out
