"""Where a run's initial policy comes from: a local HF directory or a built-in preset (random init)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclasses.dataclass
class ModelSourceConfig:
    """The policy's initial weights: an HF directory (`path`), or a built-in preset with random init (`preset`,
    optionally with a smaller vocabulary for a synthetic task's tokenizer). dtype: fp32 or bf16. drop_mtp: leave a
    DeepSeek-V3 checkpoint's multi-token-prediction layers out (the official checkpoints have one; the model
    stack has no MTP, and transformers leaves them out too)."""

    path: str | None = None
    preset: str | None = None
    vocab_size: int | None = None
    dtype: str = "bf16"
    drop_mtp: bool = False

    def __post_init__(self):
        if (self.path is None) == (self.preset is None):
            raise ValueError(f"model: set exactly one of model.path (an HF directory) and model.preset, got "
                             f"path={self.path!r}, preset={self.preset!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {', '.join(map(repr, DTYPES))}, got {self.dtype!r}")
        if self.vocab_size is not None and self.preset is None:
            raise ValueError("model.vocab_size overrides a preset's vocabulary; an HF checkpoint keeps its own")

    def check_path(self) -> None:
        """FileNotFoundError naming model.path unless it is an HF directory (checked before anything reads it, so
        a wrong path is not reported as, say, a missing tokenizer)."""
        if self.path is None:
            return
        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"model.path={self.path}: no such directory (an HF model directory with "
                                    "config.json, *.safetensors and the tokenizer files; nothing is downloaded)")
        if not (Path(self.path) / "config.json").is_file():
            raise FileNotFoundError(f"model.path={self.path}: not an HF model directory (no config.json)")

    def build(self):
        """The R1GPTModel for this rank (initialise the parallel layout first)."""
        from r1_megatron.models import build_model, load_hf, preset

        dtype = DTYPES[self.dtype]
        if self.path is not None:
            self.check_path()
            return load_hf(self.path, dtype=dtype, drop_mtp=self.drop_mtp)
        model_config = preset(self.preset)
        if self.vocab_size is not None:
            model_config = dataclasses.replace(model_config, vocab_size=self.vocab_size)
        return build_model(model_config, dtype=dtype)
