"""`export_gguf`: an HF directory as one GGUF file that llama.cpp (llama-cli, llama-cpp-python, Ollama, LM Studio)
loads, written with the `gguf` package; `export_checkpoint_to_gguf`: the same from a training checkpoint, through
the HF exporter (export_checkpoint_to_hf into a temporary directory next to the output, removed afterwards).

Architectures: Qwen2 (llama.cpp's `qwen2`), Llama (`llama`) and DeepSeek-V3 (`deepseek2`). llama.cpp's `llama`
rotates adjacent pairs of each head's dims (rope type NORM) where HF Llama rotates the two halves (NEOX), so q/k
rows are permuted here; `qwen2` is NEOX, nothing is permuted; DeepSeek-V3 checkpoints already store their rope
dims as pairs. Llama-3 rope scaling travels as the `rope_freqs` tensor of per-frequency divisors. DeepSeek-V3's
MLA is written for llama.cpp's absorbed attention (kv_b_proj split into k_b, transposed, and v_b), its routed
experts stacked into one [E, out, in] tensor per projection. Tensors are streamed: the header is written from the
safetensors shapes, then one tensor at a time is read, converted and appended (memory: about one tensor, or one
layer's routed experts). The file is written under a temporary name and renamed into place, so a failure (a
NaN/Inf weight, a refused tokenizer) leaves no partial file.
"""
from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as QType
from gguf import LlamaFileType
from safetensors import safe_open

from r1_megatron.models.config import Architecture, ModelConfig, RopeScaling
from r1_megatron.models.gguf_tokenizer import add_vocab, read_vocab
from r1_megatron.models.hf_checkpoint import SafetensorsReader, ignorable_tensor
from r1_megatron.models.hf_config import HFLayoutOptions, read_hf_config

# --outtype -> (the type of 2-D weights, general.file_type); 1-D tensors (norms, biases, rope_freqs) stay F32
OUTTYPES = {"f32": (QType.F32, LlamaFileType.ALL_F32), "f16": (QType.F16, LlamaFileType.MOSTLY_F16),
            "bf16": (QType.BF16, LlamaFileType.MOSTLY_BF16), "q8_0": (QType.Q8_0, LlamaFileType.MOSTLY_Q8_0)}
GGUF_ARCHITECTURES = {Architecture.QWEN2: "qwen2", Architecture.LLAMA: "llama",
                      Architecture.DEEPSEEK_V3: "deepseek2"}
_GLOBAL_TENSORS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_LAYER_TENSORS = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                  "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                  "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                  "mlp.down_proj": "ffn_down"}
_DEEPSEEK_LAYER_TENSORS = {"self_attn.q_a_proj": "attn_q_a", "self_attn.q_a_layernorm": "attn_q_a_norm",
                           "self_attn.q_b_proj": "attn_q_b",
                           "self_attn.kv_a_proj_with_mqa": "attn_kv_a_mqa",
                           "self_attn.kv_a_layernorm": "attn_kv_a_norm", "mlp.gate": "ffn_gate_inp",
                           "mlp.gate.e_score_correction": "exp_probs_b",  # + ".bias", as llama.cpp names it
                           **{f"mlp.shared_experts.{p}_proj": f"ffn_{p}_shexp" for p in ("gate", "up", "down")}}
ROPE_FREQS = "rope_freqs.weight"


def gguf_tensor_name(hf_name: str) -> str:
    """llama.cpp's name of an HF Qwen2/Llama tensor: model.layers.3.self_attn.q_proj.weight -> blk.3.attn_q.weight."""
    stem, _, suffix = hf_name.replace("e_score_correction_bias", "e_score_correction.bias").rpartition(".")
    if stem in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[stem]}.{suffix}"
    layer = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", stem)
    names = {**_LAYER_TENSORS, **_DEEPSEEK_LAYER_TENSORS}
    if layer is None or layer.group(2) not in names:
        raise ValueError(f"GGUF export: HF tensor {hf_name!r} has no llama.cpp counterpart")
    return f"blk.{layer.group(1)}.{names[layer.group(2)]}.{suffix}"


def rope_halves_to_pairs(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder the rows of a q/k projection (weight [H*d, in] or bias [H*d]) from HF's rotate-half layout (head h
    rotates dims i and i + d/2 together) to llama.cpp's adjacent pairs (2i, 2i+1):
    out[h*d + 2i + j] = rows[h*d + j*d/2 + i] for i < d/2, j in {0, 1}."""
    head_dim = rows.shape[0] // n_heads
    return rows.reshape(n_heads, 2, head_dim // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def llama3_rope_factors(config: ModelConfig) -> np.ndarray:
    """llama.cpp's `rope_freqs`: per frequency i < d/2 the divisor f_i of freq_i = theta^(-2i/d) that Llama-3 scaling
    applies (scaled freq = freq_i / f_i). With wavelength w = 2*pi/freq_i, L = original_max_position_embeddings:
    f_i = 1 for w < L/high_freq_factor, factor for w > L/low_freq_factor, else 1 / ((1 - s)/factor + s) with
    s = (L/w - low_freq_factor) / (high_freq_factor - low_freq_factor) (transformers' llama3 rope)."""
    rope, d = config.rope, config.head_dim
    freqs = 1.0 / rope.theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    wavelen, L = 2 * math.pi / freqs, rope.original_max_position_embeddings
    smooth = (L / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    factors = np.where(wavelen < L / rope.high_freq_factor, 1.0,
                       np.where(wavelen > L / rope.low_freq_factor, rope.factor,
                                1.0 / ((1 - smooth) / rope.factor + smooth)))
    return factors.astype(np.float32)


def tensor_type(shape: tuple[int, ...], outtype: str) -> QType:
    """The GGML type a tensor is stored in: 1-D tensors F32 (as llama.cpp's converter keeps them); q8_0 needs rows
    that are a multiple of its 32-value blocks, other 2-D tensors fall back to F16."""
    weight_type = OUTTYPES[outtype][0]
    if len(shape) == 1:
        return QType.F32
    block = gguf.GGML_QUANT_SIZES[weight_type][0]
    return weight_type if shape[-1] % block == 0 else QType.F16


@dataclass(frozen=True)
class _Tensor:
    """One tensor of the GGUF file: made by `make` from the HF tensors `sources`, read in that order."""

    name: str                      # GGUF name
    sources: tuple[str, ...]       # HF tensors (none: rope_freqs, computed)
    shape: tuple[int, ...]
    qtype: QType
    make: Callable[[list[np.ndarray]], np.ndarray] = lambda arrays: arrays[0]

    @property
    def nbytes(self) -> int:
        return math.prod(gguf.quant_shape_to_byte_shape(self.shape, self.qtype))


class _Weights:
    """The tensors of an HF directory through the HF loader's reader (index or *.safetensors files; DeepSeek's FP8
    blocks dequantised): shapes from the headers, one tensor at a time in fp32."""

    def __init__(self, directory: Path, fp8_block_size: tuple[int, int] | None):
        self.reader = SafetensorsReader(directory, fp8_block_size)
        self.files = self.reader.file_of

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.files:
            raise ValueError(f"GGUF export: HF tensor {name!r} is missing")
        with safe_open(self.reader.directory / self.files[name], framework="pt") as f:
            return tuple(f.get_slice(name).get_shape())

    def read(self, name: str) -> np.ndarray:
        return self.reader.get(name, needed_by="GGUF").to(torch.float32).numpy()


def _tensor(weights: _Weights, outtype: str, hf_name: str, make=None, qtype: QType | None = None) -> _Tensor:
    """The GGUF tensor made from one HF tensor: unchanged, or `make(array)`; stored as `qtype` if given."""
    shape = weights.shape(hf_name)
    tensor = _Tensor(gguf_tensor_name(hf_name), (hf_name,), shape, qtype or tensor_type(shape, outtype))
    return tensor if make is None else replace(tensor, make=lambda arrays: make(arrays[0]))


def _dense_plan(config: ModelConfig, weights: _Weights, outtype: str) -> list[_Tensor]:
    """Qwen2 / Llama: every tensor of the GGUF file, in order."""
    plan = []
    if config.rope.scaling is RopeScaling.LLAMA3:
        plan.append(_Tensor(ROPE_FREQS, (), (config.head_dim // 2,), QType.F32, lambda _: llama3_rope_factors(config)))
    plan.append(_tensor(weights, outtype, "model.embed_tokens.weight"))
    llama = config.architecture is Architecture.LLAMA
    rope_heads = {"self_attn.q_proj": config.num_attention_heads, "self_attn.k_proj": config.num_kv_heads}
    for i in range(config.num_layers):
        for stem in _LAYER_TENSORS:
            heads = rope_heads.get(stem) if llama else None
            make = partial(rope_halves_to_pairs, n_heads=heads) if heads else None
            plan.append(_tensor(weights, outtype, f"model.layers.{i}.{stem}.weight", make))
            if config.qkv_bias and stem in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                plan.append(_tensor(weights, outtype, f"model.layers.{i}.{stem}.bias", make))
    return plan + _output_tensors(config, weights, outtype)


def _output_tensors(config: ModelConfig, weights: _Weights, outtype: str) -> list[_Tensor]:
    """output_norm, and output unless tied (llama.cpp then reads token_embd)."""
    names = ["model.norm.weight"] + ([] if config.tie_word_embeddings else ["lm_head.weight"])
    return [_tensor(weights, outtype, name) for name in names]


def _kv_b_tensors(config: ModelConfig, weights: _Weights, outtype: str, layer: int) -> list[_Tensor]:
    """llama.cpp's absorbed MLA wants kv_b_proj [H*(nope + v), kv_lora] as attn_k_b [H, kv_lora, nope] (each head's
    k rows, transposed) and attn_v_b [H, v, kv_lora]."""
    mla, heads = config.mla, config.num_attention_heads
    name = f"model.layers.{layer}.self_attn.kv_b_proj.weight"
    weights.shape(name)  # a clear error if it is missing
    nope, v, rank = mla.qk_nope_head_dim, mla.v_head_dim, mla.kv_lora_rank

    def per_head(arrays):
        return arrays[0].reshape(heads, nope + v, rank)
    k_b = (heads, rank, nope), lambda arrays: per_head(arrays)[:, :nope].transpose(0, 2, 1)
    v_b = (heads, v, rank), lambda arrays: per_head(arrays)[:, nope:]
    return [_Tensor(f"blk.{layer}.attn_{part}.weight", (name,), shape, tensor_type(shape, outtype), make)
            for part, (shape, make) in (("k_b", k_b), ("v_b", v_b))]


def _moe_tensors(config: ModelConfig, weights: _Weights, outtype: str, layer: int) -> list[_Tensor]:
    """Router (kept F32, as llama.cpp's converter keeps it) and its expert bias, the routed experts stacked into
    [E, out, in] tensors, and the shared experts."""
    p = f"model.layers.{layer}.mlp."
    plan = [_tensor(weights, outtype, p + "gate.weight", qtype=QType.F32),
            _tensor(weights, outtype, p + "gate.e_score_correction_bias")]
    for part in ("gate", "up", "down"):
        names = tuple(f"{p}experts.{e}.{part}_proj.weight" for e in range(config.moe.num_experts))
        shape = (len(names), *weights.shape(names[0]))
        plan.append(_Tensor(f"blk.{layer}.ffn_{part}_exps.weight", names, shape, tensor_type(shape, outtype),
                            np.stack))
        if config.moe.num_shared_experts:
            plan.append(_tensor(weights, outtype, f"{p}shared_experts.{part}_proj.weight"))
    return plan


def _deepseek_plan(config: ModelConfig, weights: _Weights, outtype: str) -> list[_Tensor]:
    """DeepSeek-V3 as llama.cpp's deepseek2: MLA (q low-rank, kv_b split), dense then MoE layers."""
    attention = ("q_a_proj", "q_a_layernorm", "q_b_proj", "kv_a_proj_with_mqa", "kv_a_layernorm", "o_proj")
    stems = ("input_layernorm", *(f"self_attn.{n}" for n in attention), "post_attention_layernorm")
    plan = [_tensor(weights, outtype, "model.embed_tokens.weight")]
    for i in range(config.num_layers):
        plan += [_tensor(weights, outtype, f"model.layers.{i}.{stem}.weight") for stem in stems]
        plan += _kv_b_tensors(config, weights, outtype, i)
        if i < config.moe.first_k_dense:
            plan += [_tensor(weights, outtype, f"model.layers.{i}.mlp.{part}_proj.weight")
                     for part in ("gate", "up", "down")]
        else:
            plan += _moe_tensors(config, weights, outtype, i)
    return plan + _output_tensors(config, weights, outtype)


def _plan(config: ModelConfig, weights: _Weights, outtype: str) -> list[_Tensor]:
    """Every tensor of the GGUF file, in order; the HF tensors must be exactly those the config describes."""
    plan = (_deepseek_plan if config.architecture is Architecture.DEEPSEEK_V3 else _dense_plan)(config, weights,
                                                                                                 outtype)
    used = {name for tensor in plan for name in tensor.sources}
    # FP8 scales, MTP layers (dropped, as llama.cpp's converter does) and a tied checkpoint's lm_head are expected
    extra = sorted(name for name in set(weights.files) - used if not ignorable_tensor(name, config))
    if extra:
        raise ValueError(f"GGUF export: HF tensor {extra[0]!r} does not belong to a {config.architecture.value} model")
    return plan


def _data(tensor: _Tensor, weights: _Weights, outtype: str) -> np.ndarray:
    """The stored bytes of one tensor; NaN/Inf in the weights (or from an f16 overflow) is refused."""
    arrays = [weights.read(name) for name in tensor.sources]
    for name, values in zip(tensor.sources, arrays):
        if not np.isfinite(values).all():
            raise ValueError(f"GGUF export: HF tensor {name!r} contains NaN or Inf; refusing to export non-finite "
                             "weights, nothing was written")
    values = tensor.make(arrays)
    if tensor.qtype is QType.F16 and np.abs(values).max() > np.finfo(np.float16).max:
        raise ValueError(f"GGUF export: HF tensor {tensor.sources[0]!r} overflows float16 (|w| > 65504); use "
                         f"--outtype bf16 or f32 instead of {outtype}")
    return gguf.quants.quantize(np.ascontiguousarray(values, dtype=np.float32), tensor.qtype)


def _check_rope(config: ModelConfig, arch: str) -> None:
    rope = config.rope
    allowed = {"llama": (RopeScaling.NONE, RopeScaling.LLAMA3), "qwen2": (RopeScaling.NONE,),
               "deepseek2": (RopeScaling.NONE, RopeScaling.YARN)}[arch]
    if rope.scaling not in allowed:
        raise ValueError(f"GGUF export: rope scaling {rope.scaling.value} is not supported for {arch} "
                         f"(supported: {', '.join(s.value for s in allowed)})")
    if rope.scaling is RopeScaling.YARN:  # llama.cpp's deepseek2 takes DeepSeek-V3's values, not others
        for field, value, expected in (("mscale", rope.mscale, 1.0), ("beta_fast", rope.beta_fast, 32.0),
                                       ("beta_slow", rope.beta_slow, 1.0)):
            if value != expected:
                raise ValueError(f"GGUF export: yarn {field}={value} is not supported (llama.cpp's deepseek2 "
                                 f"uses {expected})")


def check_architecture(model_dir: Path) -> tuple[ModelConfig, HFLayoutOptions, str]:
    """The model config and layout of the HF directory (MTP layers dropped) and llama.cpp's architecture name for
    it; ValueError naming what llama.cpp would not run as the source does."""
    config, layout = read_hf_config(model_dir, drop_mtp=True)  # refuses what the model stack does not support
    arch = GGUF_ARCHITECTURES[config.architecture]
    if arch == "deepseek2" and not layout.rope_interleave:  # llama.cpp rotates the stored (interleaved) pairs
        raise ValueError("GGUF export: DeepSeek-V3 with rope_interleave=false is not supported")
    if arch == "deepseek2" and config.mla.q_lora_rank is None:  # llama.cpp requires it but for V2-Lite's depths
        raise ValueError("GGUF export: DeepSeek-V3 with q_lora_rank=null is not supported (llama.cpp's deepseek2 "
                         "needs the q low-rank projection)")
    _check_rope(config, arch)
    return config, layout, arch


def _add_model_metadata(writer: gguf.GGUFWriter, config: ModelConfig, name: str, outtype: str) -> None:
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_layers)
    writer.add_feed_forward_length(config.ffn_hidden_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_rope_freq_base(config.rope.theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(OUTTYPES[outtype][1])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if config.mla is None:
        writer.add_head_count_kv(config.num_kv_heads)
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
        writer.add_rope_dimension_count(config.head_dim)
    else:
        _add_deepseek_metadata(writer, config)


def _add_deepseek_metadata(writer: gguf.GGUFWriter, config: ModelConfig) -> None:
    """deepseek2's MLA runs as MQA over the latent: one kv head of kv_lora_rank + rope dims; the per-head sizes
    are the *_mla keys. Routing: sigmoid scores with the expert bias, group-limited, normalised, scaled."""
    mla, moe, rope = config.mla, config.moe, config.rope
    writer.add_head_count_kv(1)
    writer.add_q_lora_rank(mla.q_lora_rank)
    writer.add_kv_lora_rank(mla.kv_lora_rank)
    writer.add_key_length(mla.kv_lora_rank + mla.qk_rope_head_dim)
    writer.add_value_length(mla.kv_lora_rank)
    writer.add_key_length_mla(mla.qk_nope_head_dim + mla.qk_rope_head_dim)
    writer.add_value_length_mla(mla.v_head_dim)
    writer.add_rope_dimension_count(mla.qk_rope_head_dim)
    writer.add_leading_dense_block_count(moe.first_k_dense)
    writer.add_expert_feed_forward_length(moe.ffn_hidden_size)
    writer.add_expert_count(moe.num_experts)
    writer.add_expert_used_count(moe.top_k)
    writer.add_expert_shared_count(moe.num_shared_experts)
    writer.add_expert_weights_scale(moe.routed_scaling_factor)
    writer.add_expert_weights_norm(moe.norm_topk_prob)
    writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    if moe.num_groups is not None:
        writer.add_expert_group_count(moe.num_groups)
        writer.add_expert_group_used_count(moe.group_topk)
    if rope.scaling is RopeScaling.YARN:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope.factor)
        writer.add_rope_scaling_orig_ctx_len(rope.original_max_position_embeddings)
        writer.add_rope_scaling_yarn_log_mul(0.1 * rope.mscale_all_dim)  # as llama.cpp's converter writes it


def export_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, *, outtype: str = "f16",
                tokenizer_dir: str | os.PathLike | None = None, name: str | None = None) -> Path:
    """Write the Qwen2/Llama/DeepSeek-V3 HF checkpoint `model_dir` (config.json, safetensors) with the tokenizer of
    `tokenizer_dir` (default `model_dir`) and its chat template as the GGUF file `out`; returns `out`.
    `name`: general.name (default: the directory's name).

    `outtype`: f32, f16, bf16 or q8_0 for the 2-D weights. ValueError (nothing written) for another architecture
    or rope scaling, a tokenizer llama.cpp would split differently, or NaN/Inf weights."""
    if outtype not in OUTTYPES:
        raise ValueError(f"GGUF export: outtype {outtype!r} is not supported (supported: {', '.join(OUTTYPES)})")
    model_dir, out = Path(model_dir), Path(out)
    config, layout, arch = check_architecture(model_dir)
    vocab = read_vocab(Path(tokenizer_dir) if tokenizer_dir is not None else model_dir, config.vocab_size)
    weights = _Weights(model_dir, layout.fp8_block_size)
    plan = _plan(config, weights, outtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        _add_model_metadata(writer, config, name or model_dir.resolve().name, outtype)
        add_vocab(writer, vocab)
        _write_tensors(writer, plan, config, weights, outtype)
        writer.close()
        tmp.rename(out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def _write_tensors(writer: gguf.GGUFWriter, plan: list[_Tensor], config: ModelConfig, weights: _Weights,
                   outtype: str) -> None:
    """Header, metadata and tensor table from the plan's shapes, then each tensor's data, read one at a time."""
    for tensor in plan:
        writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(np.float32), tensor.nbytes, raw_dtype=tensor.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in plan:
        writer.write_tensor_data(_data(tensor, weights, outtype))


def export_checkpoint_to_gguf(checkpoint: str | os.PathLike, out: str | os.PathLike, *, outtype: str = "f16",
                              tokenizer_dir: str | os.PathLike | None = None, parallel=None):
    """The model of a training checkpoint (see resolve_checkpoint) as the GGUF file `out`, with the tokenizer of
    `tokenizer_dir` (default: the run's). Collective under torchrun, like export_checkpoint_to_hf: every rank
    loads its part; rank 0 writes the HF directory `out`.hf-tmp, converts it and removes it, and every rank
    raises rank 0's error if it failed. Returns the HFExport record with `out` the GGUF file."""
    import torch.distributed as dist

    from r1_megatron.models.hf_export import transferable_error  # the exception itself where it pickles
    from r1_megatron.runtime import world_gloo_group
    from r1_megatron.training.checkpoint import export_checkpoint_to_hf

    if outtype not in OUTTYPES:  # before loading the model
        raise ValueError(f"GGUF export: outtype {outtype!r} is not supported (supported: {', '.join(OUTTYPES)})")
    out = Path(out)
    hf_dir = out.with_name(out.name + ".hf-tmp")
    result = export_checkpoint_to_hf(checkpoint, hf_dir, tokenizer_dir=tokenizer_dir, parallel=parallel)
    error = None
    if dist.get_rank() == 0:
        try:
            export_gguf(hf_dir, out, outtype=outtype, name=out.stem)
        except Exception as exc:  # shared below, so that no rank reports success for a failed export
            error = exc
        finally:
            shutil.rmtree(hf_dir, ignore_errors=True)
    shared = [None if error is None else transferable_error(error)]
    dist.broadcast_object_list(shared, src=0, group=world_gloo_group())
    if shared[0] is not None:
        raise error if error is not None else shared[0]
    return replace(result, out=out)
