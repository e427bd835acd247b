"""`export_gguf`: an HF directory as one GGUF file that llama.cpp (llama-cli, llama-cpp-python, Ollama, LM Studio)
loads, written with the `gguf` package; `export_checkpoint_to_gguf`: the same from a training checkpoint, through
the HF exporter (export_checkpoint_to_hf into a temporary directory next to the output, removed afterwards).

Architectures: Qwen2 (llama.cpp's `qwen2`) and Llama (`llama`). llama.cpp's `llama` rotates adjacent pairs of each
head's dims (rope type NORM) where HF Llama rotates the two halves (NEOX), so q/k rows are permuted here;
`qwen2` is NEOX, nothing is permuted. Llama-3 rope scaling travels as the `rope_freqs` tensor of per-frequency
divisors. Tensors are streamed: the header is written from the safetensors shapes, then one tensor at a time is
read, converted and appended (memory: about one tensor). The file is written under a temporary name and renamed
into place, so a failure (a NaN/Inf weight, a refused tokenizer) leaves no partial file.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as QType
from gguf import LlamaFileType
from safetensors import safe_open

from r1_megatron.models.config import Architecture, ModelConfig, RopeScaling
from r1_megatron.models.gguf_tokenizer import add_vocab, read_vocab
from r1_megatron.models.hf_config import read_hf_config

# --outtype -> (the type of 2-D weights, general.file_type); 1-D tensors (norms, biases, rope_freqs) stay F32
OUTTYPES = {"f32": (QType.F32, LlamaFileType.ALL_F32), "f16": (QType.F16, LlamaFileType.MOSTLY_F16),
            "bf16": (QType.BF16, LlamaFileType.MOSTLY_BF16), "q8_0": (QType.Q8_0, LlamaFileType.MOSTLY_Q8_0)}
GGUF_ARCHITECTURES = {Architecture.QWEN2: "qwen2", Architecture.LLAMA: "llama"}
_GLOBAL_TENSORS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_LAYER_TENSORS = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                  "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                  "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                  "mlp.down_proj": "ffn_down"}
ROPE_FREQS = "rope_freqs.weight"


def gguf_tensor_name(hf_name: str) -> str:
    """llama.cpp's name of an HF Qwen2/Llama tensor: model.layers.3.self_attn.q_proj.weight -> blk.3.attn_q.weight."""
    stem, _, suffix = hf_name.rpartition(".")
    if stem in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[stem]}.{suffix}"
    layer = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", stem)
    if layer is None or layer.group(2) not in _LAYER_TENSORS:
        raise ValueError(f"GGUF export: HF tensor {hf_name!r} has no llama.cpp counterpart")
    return f"blk.{layer.group(1)}.{_LAYER_TENSORS[layer.group(2)]}.{suffix}"


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
    name: str               # GGUF name
    source: str | None      # HF tensor (None: rope_freqs, computed)
    shape: tuple[int, ...]
    qtype: QType
    rope_heads: int | None  # q/k of llama: heads whose rows rope_halves_to_pairs reorders

    @property
    def nbytes(self) -> int:
        return math.prod(gguf.quant_shape_to_byte_shape(self.shape, self.qtype))


class _Weights:
    """The safetensors files of an HF directory, opened lazily: shapes from the headers, one tensor at a time."""

    def __init__(self, directory: Path):
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            self.files = {name: directory / file for name, file in json.loads(index.read_text())["weight_map"].items()}
        elif (directory / "model.safetensors").is_file():
            with safe_open(directory / "model.safetensors", framework="pt") as f:
                self.files = dict.fromkeys(f.keys(), directory / "model.safetensors")
        else:
            raise FileNotFoundError(f"GGUF export: no model.safetensors(.index.json) in {directory}")

    def shape(self, name: str) -> tuple[int, ...]:
        with safe_open(self.files[name], framework="pt") as f:
            return tuple(f.get_slice(name).get_shape())

    def read(self, name: str) -> np.ndarray:
        with safe_open(self.files[name], framework="pt") as f:
            return f.get_tensor(name).to(torch.float32).numpy()


def _plan(config: ModelConfig, weights: _Weights, outtype: str) -> list[_Tensor]:
    """Every tensor of the GGUF file, in order; the HF tensors must be exactly those of the config."""
    expected = ["model.embed_tokens.weight"]
    for i in range(config.num_layers):
        for stem in _LAYER_TENSORS:
            expected.append(f"model.layers.{i}.{stem}.weight")
            if config.qkv_bias and stem in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                expected.append(f"model.layers.{i}.{stem}.bias")
    expected.append("model.norm.weight")
    if not config.tie_word_embeddings:
        expected.append("lm_head.weight")
    missing = [name for name in expected if name not in weights.files]
    if missing:
        raise ValueError(f"GGUF export: HF tensor {missing[0]!r} is missing ({len(missing)} missing in all)")
    extra = sorted(set(weights.files) - set(expected) - {"lm_head.weight"})  # a tied checkpoint may keep lm_head
    if extra:
        raise ValueError(f"GGUF export: HF tensor {extra[0]!r} does not belong to a {config.architecture.value} model")
    rope_heads = {"self_attn.q_proj": config.num_attention_heads, "self_attn.k_proj": config.num_kv_heads}
    plan = []
    if config.rope.scaling is RopeScaling.LLAMA3:
        plan.append(_Tensor(ROPE_FREQS, None, (config.head_dim // 2,), QType.F32, None))
    for name in expected:
        shape = weights.shape(name)
        stem = name.rsplit(".", 1)[0].split(".", 3)[-1]
        heads = rope_heads.get(stem) if config.architecture is Architecture.LLAMA else None
        plan.append(_Tensor(gguf_tensor_name(name), name, shape, tensor_type(shape, outtype), heads))
    return plan


def _data(tensor: _Tensor, config: ModelConfig, weights: _Weights, outtype: str) -> np.ndarray:
    """The stored bytes of one tensor; NaN/Inf in the weights (or from an f16 overflow) is refused."""
    if tensor.source is None:
        return llama3_rope_factors(config)
    values = weights.read(tensor.source)
    if tensor.rope_heads is not None:
        values = rope_halves_to_pairs(values, tensor.rope_heads)
    if not np.isfinite(values).all():
        raise ValueError(f"GGUF export: HF tensor {tensor.source!r} contains NaN or Inf; refusing to export "
                         "non-finite weights, nothing was written")
    if tensor.qtype is QType.F16 and np.abs(values).max() > np.finfo(np.float16).max:
        raise ValueError(f"GGUF export: HF tensor {tensor.source!r} overflows float16 (|w| > 65504); use "
                         f"--outtype bf16 or f32 instead of {outtype}")
    return gguf.quants.quantize(values, tensor.qtype)


def check_architecture(config: ModelConfig) -> str:
    """llama.cpp's architecture name for `config`; ValueError naming what is not supported."""
    arch = GGUF_ARCHITECTURES.get(config.architecture)
    if arch is None:
        raise ValueError(f"GGUF export: architecture {config.architecture.value} is not supported (supported: "
                         f"{', '.join(a.value for a in GGUF_ARCHITECTURES)})")
    allowed = (RopeScaling.NONE, RopeScaling.LLAMA3) if arch == "llama" else (RopeScaling.NONE,)
    if config.rope.scaling not in allowed:
        raise ValueError(f"GGUF export: rope scaling {config.rope.scaling.value} is not supported for {arch} "
                         f"(supported: {', '.join(s.value for s in allowed)})")
    return arch


def _add_model_metadata(writer: gguf.GGUFWriter, config: ModelConfig, name: str, outtype: str) -> None:
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_layers)
    writer.add_feed_forward_length(config.ffn_hidden_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope.theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(OUTTYPES[outtype][1])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def export_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, *, outtype: str = "f16",
                tokenizer_dir: str | os.PathLike | None = None, name: str | None = None) -> Path:
    """Write the Qwen2/Llama HF checkpoint `model_dir` (config.json, safetensors) with the tokenizer of
    `tokenizer_dir` (default `model_dir`) and its chat template as the GGUF file `out`; returns `out`.
    `name`: general.name (default: the directory's name).

    `outtype`: f32, f16, bf16 or q8_0 for the 2-D weights. ValueError (nothing written) for another architecture
    or rope scaling, a tokenizer llama.cpp would split differently, or NaN/Inf weights."""
    if outtype not in OUTTYPES:
        raise ValueError(f"GGUF export: outtype {outtype!r} is not supported (supported: {', '.join(OUTTYPES)})")
    model_dir, out = Path(model_dir), Path(out)
    config, _ = read_hf_config(model_dir)
    arch = check_architecture(config)
    vocab = read_vocab(Path(tokenizer_dir) if tokenizer_dir is not None else model_dir, config.vocab_size)
    weights = _Weights(model_dir)
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
        writer.write_tensor_data(_data(tensor, config, weights, outtype))


def export_checkpoint_to_gguf(checkpoint: str | os.PathLike, out: str | os.PathLike, *, outtype: str = "f16",
                              tokenizer_dir: str | os.PathLike | None = None, parallel=None):
    """The model of a training checkpoint (see resolve_checkpoint) as the GGUF file `out`, with the tokenizer of
    `tokenizer_dir` (default: the run's). Collective under torchrun, like export_checkpoint_to_hf: every rank
    loads its part; rank 0 writes the HF directory `out`.hf-tmp, converts it and removes it, and every rank
    raises rank 0's error if it failed. Returns the HFExport record with `out` the GGUF file."""
    import torch.distributed as dist

    from r1_megatron.models.hf_export import _transferable  # the exception itself where it pickles
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
    shared = [None if error is None else _transferable(error)]
    dist.broadcast_object_list(shared, src=0, group=world_gloo_group())
    if shared[0] is not None:
        raise error if error is not None else shared[0]
    return replace(result, out=out)
