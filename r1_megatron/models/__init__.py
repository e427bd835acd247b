"""The Megatron-Core model stack: configs, presets, HF checkpoints in and out, and logits.

Public API: `load_hf(path, *, dtype)`, `save_hf(model, path)` (collective: every rank calls it, at any layout),
`logits(model, input_ids)`, `build_model(config)`, `preset(name)`, and the config dataclasses.
"""
from r1_megatron.models.config import (
    Architecture,
    MLAConfig,
    ModelConfig,
    MoEConfig,
    RopeConfig,
    RopeScaling,
    to_transformer_config,
)
from r1_megatron.models.gpt import R1GPTModel, build_model
from r1_megatron.models.hf_checkpoint import CheckpointError, load_hf
from r1_megatron.models.hf_config import HFConfigError
from r1_megatron.models.hf_export import save_hf
from r1_megatron.models.logits import logits
from r1_megatron.models.presets import PRESETS, preset

__all__ = [
    "Architecture", "CheckpointError", "HFConfigError", "MLAConfig", "ModelConfig", "MoEConfig", "PRESETS",
    "R1GPTModel", "RopeConfig", "RopeScaling", "build_model", "load_hf", "logits", "preset", "save_hf",
    "to_transformer_config",
]
