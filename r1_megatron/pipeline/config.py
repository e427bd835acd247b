"""The pipeline recipe (`r1-megatron pipeline --config RECIPE`): run_dir, seed, the evaluation after every
model-producing stage, and the stages in order, each an existing command with its own config section
(docs/pipeline.md). Stage sections stay plain data here: they are built as their command's typed config once
their `${STAGE.OUTPUT}` references are replaced (pipeline/plan.py)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, ClassVar

from r1_megatron.evaluation.config import (BenchmarksConfig, EvalEngineConfig, EvalModelConfig, EvalRewardsConfig,
                                           EvalRunConfig, EvalSampling)
from r1_megatron.runtime import ParallelConfig

STAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")  # what ${STAGE.OUTPUT} can name; a directory name too


@dataclasses.dataclass
class StageSpec:
    """One stage: `command` (a row of pipeline/stages.py STAGE_KINDS), its `config` (that command's own recipe
    keys; `${STAGE.OUTPUT}` strings name earlier stages' outputs), `recipe` (a base YAML the config is written
    over; relative to the pipeline recipe's directory; null: the command's defaults), `eval` (evaluate the
    stage's model with the pipeline's `eval` section; null: yes for commands that produce a model)."""

    command: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    recipe: str | None = None
    eval: bool | None = None  # checked with the stage's name in pipeline/plan.py, like `command`


@dataclasses.dataclass
class PipelineEvalConfig:
    """`r1-megatron eval`'s config without model and out (the pipeline sets them: the stage's HF export and
    STAGE_DIR/eval). seed: null: the pipeline's seed. dtype: of the evaluated model."""

    seed: int | None = None
    dtype: str = "bf16"
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    benchmarks: BenchmarksConfig = dataclasses.field(default_factory=BenchmarksConfig)
    sampling: EvalSampling = dataclasses.field(default_factory=EvalSampling)
    engine: EvalEngineConfig = dataclasses.field(default_factory=EvalEngineConfig)
    rewards: EvalRewardsConfig = dataclasses.field(default_factory=EvalRewardsConfig)
    progress: bool = True

    def __post_init__(self):
        EvalModelConfig(dtype=self.dtype)  # its own message for a bad dtype

    def run_config(self, model_dir: str, out: Path, seed: int) -> EvalRunConfig:
        return EvalRunConfig(out=str(out), seed=seed if self.seed is None else self.seed,
                             model=EvalModelConfig(path=model_dir, dtype=self.dtype), parallel=self.parallel,
                             benchmarks=self.benchmarks, sampling=self.sampling, engine=self.engine,
                             rewards=self.rewards, progress=self.progress)


@dataclasses.dataclass
class PipelineConfig:
    """run_dir: where every stage's directory (RUN_DIR/stages/NAME), the table (pipeline.md, pipeline.json) go; a
    fixed path, so that rerunning the same command resumes. seed: every stage's `seed` unless its config sets one.
    eval: the evaluation after each model-producing stage (PipelineEvalConfig keys; null: none). stages: in the
    order they run."""

    DEFAULT_RECIPE: ClassVar[Path] = Path(__file__).resolve().parent / "recipes" / "toy_pipeline.yaml"

    run_dir: str = "runs/r1_pipeline"
    seed: int = 0
    eval: dict[str, Any] | None = None
    stages: dict[str, StageSpec] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.stages:
            raise ValueError("stages: a pipeline needs at least one stage")
        for name in self.stages:
            if not STAGE_NAME.fullmatch(name):
                raise ValueError(f"stages: stage name {name!r} must be letters, digits, _ and - (not starting "
                                 "with a digit or -): it names the stage's directory and its ${STAGE.OUTPUT}")
