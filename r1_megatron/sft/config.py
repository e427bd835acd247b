"""The SFT run's configuration (`r1-megatron train sft`): the sections every run has (training/run_sections.py)
plus the data and the schedule. Cold-start SFT, SFT on rejection-sampled data and distillation into dense
students are all this command with different data and recipes (examples/*sft*.yaml, examples/distill_*.yaml)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

from r1_megatron.data.sft_dataset import SFTDataConfig
from r1_megatron.evaluation.config import TrainingEvalConfig
from r1_megatron.models.source import ModelSourceConfig
from r1_megatron.sft.step import Batching
from r1_megatron.training.optimizer import LRDecay, OptimizerSettings
from r1_megatron.training.run_sections import RunConfig

SYNTHETIC = ("chat",)  # built-in data: r1_megatron/data/synthetic_chat.py


@dataclasses.dataclass(frozen=True)
class SFTDataSection(SFTDataConfig):
    """The dataset's own config (data/sft_dataset.py: formats, fields, template, max_seq_len, overlong, on_error,
    validation, ...; docs/sft_data.md) with conversation files in `paths`, or the built-in synthetic chats
    (`synthetic: chat`, `num_synthetic` of them, with their own character tokenizer). The tokenizer comes from
    `tokenizer` (a directory), else from model.path."""

    paths: tuple[str, ...] = ()
    synthetic: str | None = None
    num_synthetic: int = 64
    tokenizer: str | None = None

    def __post_init__(self):
        if bool(self.paths) == (self.synthetic is not None):
            raise ValueError(f"data: set exactly one of data.paths (conversation files) and data.synthetic, got "
                             f"paths={list(self.paths)!r}, synthetic={self.synthetic!r}")
        if self.synthetic not in (None, *SYNTHETIC):
            raise ValueError(f"data.synthetic must be one of {', '.join(SYNTHETIC)}, got {self.synthetic!r}")
        try:
            super().__post_init__()
        except ValueError as e:  # in the run config's terms: data.max_seq_len, not SFTDataConfig.max_seq_len
            raise ValueError(str(e).replace("SFTDataConfig.", "data.").replace("SFTDataConfig:", "data:")) from None

    def _check_paths(self) -> None:
        pass  # checked above: files or the synthetic chats

    def dataset_config(self) -> SFTDataConfig:
        """The dataset's config: these fields, with the synthetic chats named as the source."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(SFTDataConfig)}
        return SFTDataConfig(**values | {"paths": self.paths or (f"synthetic:{self.synthetic}",)})


@dataclasses.dataclass
class SFTTrainingConfig:
    """The schedule. `epochs` passes over the training examples (R1's distillation: 2-3), or exactly `steps`
    optimizer steps when steps > 0; `batch_size` examples per optimizer step (global, over data-parallel ranks);
    `micro_batch_size` rows per forward/backward; `max_tokens_per_micro_batch`: pack several examples into each
    row up to that many tokens (null: one example per row, right-padded); validation loss every
    `validate_every` steps and at the end (0: only at the end; no validation data: never)."""

    epochs: float = 2.0
    steps: int = 0
    batch_size: int = 64
    micro_batch_size: int = 1
    max_tokens_per_micro_batch: int | None = 4096
    validate_every: int = 0

    def __post_init__(self):
        if not self.epochs > 0 and not self.steps:
            raise ValueError(f"training.epochs must be > 0 (or set training.steps), got {self.epochs!r}")
        for name in ("steps", "validate_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"training.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.batch_size < 1:
            raise ValueError(f"training.batch_size must be a positive integer, got {self.batch_size!r}")
        try:
            self.batching()
        except ValueError as e:
            raise ValueError(f"training.{e}") from None

    def batching(self) -> Batching:
        return Batching(self.micro_batch_size, self.max_tokens_per_micro_batch)


def _sft_optimizer() -> OptimizerSettings:
    """R1's distillation schedule shape: warmup, then cosine decay to a tenth of the peak over the run."""
    return OptimizerSettings(lr=1e-5, min_lr=1e-6, warmup_steps=0, decay=LRDecay.COSINE, weight_decay=0.0)


@dataclasses.dataclass
class SFTRunConfig(RunConfig):
    DEFAULT_RECIPE: ClassVar[Path] = Path(__file__).resolve().parent / "recipes" / "tiny_sft.yaml"

    run_dir: str = "runs/sft"
    model: ModelSourceConfig = dataclasses.field(default_factory=lambda: ModelSourceConfig(preset="tiny-dense"))
    optimizer: OptimizerSettings = dataclasses.field(default_factory=_sft_optimizer)
    data: SFTDataSection = dataclasses.field(default_factory=lambda: SFTDataSection(synthetic="chat"))
    training: SFTTrainingConfig = dataclasses.field(default_factory=SFTTrainingConfig)
    evaluation: TrainingEvalConfig = dataclasses.field(default_factory=TrainingEvalConfig)

    def __post_init__(self):
        budget = self.training.max_tokens_per_micro_batch
        if budget is not None and budget < self.data.max_seq_len - 1:
            raise ValueError(f"training.max_tokens_per_micro_batch={budget} is below data.max_seq_len="
                             f"{self.data.max_seq_len} - 1: the longest example would not fit in a row")
