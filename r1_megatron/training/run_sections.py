"""The config sections every command shares (run_dir, seed, model, parallel, optimizer, checkpoint, logging),
defined once: each command's config (GRPORunConfig, SFTRunConfig, ...) is a `RunConfig` plus its own sections."""
from __future__ import annotations

import dataclasses

from r1_megatron.models.source import ModelSourceConfig
from r1_megatron.runtime import ParallelConfig
from r1_megatron.training.optimizer import OptimizerSettings


@dataclasses.dataclass
class CheckpointConfig:
    """Distributed checkpoints every `every_steps` steps and at the end (0 = only at the end); SIGTERM also
    checkpoints. export_hf: write the final model as an HF directory under the run directory."""

    every_steps: int = 50
    export_hf: bool = True

    def __post_init__(self):
        if self.every_steps < 0:
            raise ValueError(f"checkpoint.every_steps must be >= 0, got {self.every_steps!r}")


@dataclasses.dataclass
class LoggingConfig:
    """tensorboard: mirror metrics (and sampled completions, as text) to RUN_DIR/tensorboard; progress: the
    progress bar/lines; samples_per_step: completions written to RUN_DIR/samples.jsonl each step with their prompt
    and rewards (one of each of the first prompts of data-parallel rank 0; 0 = none; commands that generate)."""

    tensorboard: bool = True
    progress: bool = True
    samples_per_step: int = 4

    def __post_init__(self):
        if not isinstance(self.samples_per_step, int) or self.samples_per_step < 0:
            raise ValueError(f"logging.samples_per_step must be an integer >= 0, got {self.samples_per_step!r}")


@dataclasses.dataclass
class RunConfig:
    """What every run has. run_dir: where config.yaml, checkpoints, metrics, plots and the exported model go
    (`{time}` becomes a timestamp when the run starts)."""

    run_dir: str = "runs/run"
    seed: int = 0
    model: ModelSourceConfig = dataclasses.field(default_factory=lambda: ModelSourceConfig(preset="tiny-moe"))
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)  # see README, "Choosing a layout"
    optimizer: OptimizerSettings = dataclasses.field(default_factory=OptimizerSettings)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
