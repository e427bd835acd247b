"""Load a local HF checkpoint directory into the Megatron model (saving it back as one: hf_export.py).

Reads config.json and single-file or index-sharded safetensors (official DeepSeek-V3 block-scaled FP8 weights are
dequantised on read); never contacts a hub.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open

from r1_megatron.models.config import ModelConfig
from r1_megatron.models.gpt import R1GPTModel, build_model
from r1_megatron.models.hf_config import HFLayoutOptions, read_hf_config
from r1_megatron.models.hf_weights import TensorRule, weight_rules
from r1_megatron.models.placement import Placement, Shard
from r1_megatron.runtime import ensure_parallel_state



class CheckpointError(ValueError):
    """A checkpoint that does not match its config; the message names the file and tensor."""


class SafetensorsReader:
    """Tensors of an HF directory by name, through model.safetensors.index.json or every *.safetensors file."""

    def __init__(self, directory: Path, fp8_block_size: tuple[int, int] | None = None):
        self.directory, self.fp8_block_size = directory, fp8_block_size
        self.file_of = self._weight_map(directory)
        self._handles = {}
        self.bytes_read = 0  # what this rank has read, so tests can check that no rank reads everything

    @staticmethod
    def _weight_map(directory: Path) -> dict[str, str]:
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            try:
                return dict(json.loads(index.read_text())["weight_map"])
            except (json.JSONDecodeError, KeyError) as exc:
                raise CheckpointError(f"{index}: not a safetensors index ({exc})") from None
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{directory}: no *.safetensors files and no model.safetensors.index.json")
        weight_map = {}
        for file in files:
            with safe_open(file, "pt") as handle:
                weight_map.update({name: file.name for name in handle.keys()})
        return weight_map

    def _handle(self, file: str):
        if file not in self._handles:
            path = self.directory / file
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in the safetensors index but missing")
            self._handles[file] = safe_open(path, "pt")
        return self._handles[file]

    def get(self, name: str, needed_by: str, shard: Shard | None = None) -> torch.Tensor:
        """The tensor `name`, or only its `shard` slice (read from disk as a slice)."""
        if name not in self.file_of:
            raise CheckpointError(f"{self.directory}: tensor '{name}' (needed for Megatron '{needed_by}') is missing "
                                  "from the checkpoint")
        handle = self._handle(self.file_of[name])
        if f"{name}_scale_inv" in self.file_of:  # fp8 blocks do not align with TP slices: dequantise, then slice
            tensor = self._dequantize(handle.get_tensor(name), self.get(f"{name}_scale_inv", needed_by))
            return shard.take(tensor) if shard else tensor
        if shard is None:
            tensor = handle.get_tensor(name)
        else:
            lazy = handle.get_slice(name)
            size = lazy.get_shape()[shard.dim]
            if size % shard.world:
                raise CheckpointError(f"{self.directory}/{self.file_of[name]}: tensor '{name}' dim {shard.dim} "
                                      f"(size {size}) does not split into {shard.world} tensor-parallel parts")
            step = size // shard.world
            index = [slice(None)] * shard.dim + [slice(shard.rank * step, (shard.rank + 1) * step)]
            tensor = lazy[tuple(index)]
        self.bytes_read += tensor.numel() * tensor.element_size()
        return tensor

    def _dequantize(self, weight_fp8: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
        """DeepSeek-V3 FP8: each [bm, bn] block of the weight is multiplied by its entry of scale_inv."""
        bm, bn = self.fp8_block_size or (128, 128)
        rows, cols = weight_fp8.shape
        scale = scale_inv.float().repeat_interleave(bm, 0)[:rows].repeat_interleave(bn, 1)[:, :cols]
        return weight_fp8.float() * scale


def ignorable_tensor(name: str, config: ModelConfig) -> bool:
    """HF tensors that legitimately have no Megatron counterpart."""
    if name.endswith("rotary_emb.inv_freq") or name.endswith("_scale_inv"):
        return True
    if name == "lm_head.weight" and config.tie_word_embeddings:
        return True
    layer = re.match(r"model\.layers\.(\d+)\.", name)
    return layer is not None and int(layer.group(1)) >= config.num_layers  # MTP layers (drop_mtp)


def _load_tensor(target: torch.Tensor, rule: TensorRule, shard: Shard | None, reader: SafetensorsReader) -> None:
    value = rule.read(reader, shard)
    if value.shape != target.shape:
        files = sorted({reader.file_of[name] for name in rule.hf})
        part = f" (TP part {shard.rank} of {shard.world} along dim {shard.dim})" if shard else ""
        raise CheckpointError(f"{reader.directory}/{files[0]}: tensor {' + '.join(rule.hf)}{part} gives shape "
                              f"{tuple(value.shape)} but Megatron '{rule.megatron}' is {tuple(target.shape)}")
    target.copy_(value)


def _local_tensors(model: R1GPTModel) -> dict[str, torch.Tensor]:
    """This rank's parameters and persistent buffers (parameters keep their TP attributes)."""
    tensors = dict(model.named_parameters())
    tensors.update((name, t) for name, t in model.state_dict(keep_vars=True).items()
                   if name not in tensors and torch.is_tensor(t) and not name.endswith("_extra_state"))
    return tensors


@torch.no_grad()
def load_hf(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, drop_mtp: bool = False,
            reader_stats: dict | None = None) -> R1GPTModel:
    """The Megatron GPTModel for this rank, with weights from the local HF directory `path`.

    Under tensor/pipeline/expert parallelism (r1_megatron.parallel.initialize) only this rank's layers, experts and
    tensor slices are built and read. `reader_stats`, if given, receives {"bytes_read": ...} for this rank.
    """
    directory = Path(path)
    config, layout = read_hf_config(directory, drop_mtp=drop_mtp)
    rules = {rule.megatron: rule for rule in weight_rules(config, layout)}
    if config.tie_word_embeddings:  # the last pipeline stage keeps its own copy of the shared embedding
        rules["output_layer.weight"] = rules["embedding.word_embeddings.weight"]
    return build_from_checkpoint(directory, config, layout, rules, dtype=dtype, reader_stats=reader_stats)


@torch.no_grad()
def build_from_checkpoint(directory: Path, config: ModelConfig, layout: HFLayoutOptions, rules: dict[str, TensorRule],
                          *, dtype: torch.dtype, model_class: type[R1GPTModel] = R1GPTModel,
                          reader_stats: dict | None = None) -> R1GPTModel:
    """This rank's `model_class` for `config`, every local tensor read through `rules` (Megatron name <- HF names);
    every tensor of the checkpoint must be used by some rule."""
    parallel = ensure_parallel_state()
    if config.vocab_size % parallel.tp:
        raise CheckpointError(f"{directory}/config.json: vocab_size {config.vocab_size} is not divisible by "
                              f"tensor-parallel size {parallel.tp}")
    model = build_model(config, dtype=dtype, model_class=model_class)
    reader = SafetensorsReader(directory, layout.fp8_block_size)
    placement = Placement.of_this_rank(model)
    for name, target in _local_tensors(model).items():
        rule = rules.get(placement.global_name(name))
        if rule is None:
            raise CheckpointError(f"{directory}: Megatron tensor '{name}' has no HF mapping (config mismatch?)")
        _load_tensor(target, rule, placement.shard(target), reader)
    _check_all_used(directory, reader, config, rules.values())
    if reader_stats is not None:
        reader_stats["bytes_read"] = reader.bytes_read
    model.hf_source = directory
    return model


def _check_all_used(directory: Path, reader: SafetensorsReader, config: ModelConfig, rules) -> None:
    """Every tensor in the checkpoint must belong to some rule of the whole model (checked by every rank)."""
    used = {name for rule in rules for name in rule.hf}
    unexpected = sorted(n for n in reader.file_of if n not in used and not ignorable_tensor(n, config))
    if unexpected:
        raise CheckpointError(f"{directory}/{reader.file_of[unexpected[0]]}: {len(unexpected)} tensor(s) the config "
                              f"does not account for, e.g. {unexpected[:5]}")
