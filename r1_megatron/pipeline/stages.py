"""The commands a pipeline stage can run: one row per command (its config class, the outputs later stages can
reference, how it runs in this process, whether it produces a model to evaluate). A command that is not a row is
refused when the recipe is validated; nothing falls through to another command. Every row imports its command
only when a stage runs it (or its config is validated), so a recipe that does not use a command never needs it.

Outputs are paths under the stage directory RUN_DIR/stages/NAME, which the pipeline sets as the command's run_dir
(grpo, sft) or out (sample, eval); toy_data's are what r1_megatron.pipeline.toy_task.build_toy_assets returns.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Mapping


@dataclasses.dataclass(frozen=True)
class Output:
    """path: relative to the stage directory (None: the command returns it when it runs); is_dir: a directory
    (else a file): validation stands an empty one in for an output not produced yet."""

    path: str | None
    is_dir: bool


@dataclasses.dataclass(frozen=True)
class StageResult:
    """outputs: name -> path; count: steps trained, samples kept, questions evaluated (None: not counted);
    finished: False when the command stopped early on purpose (SIGTERM: checkpointed, resumable)."""

    outputs: dict[str, str]
    count: int | None
    finished: bool = True


@dataclasses.dataclass(frozen=True)
class StageKind:
    help: str
    load_config: Callable[[], type]  # the command's typed config class (imported on use)
    outputs: Mapping[str, Output]
    run: Callable[[object, Path, bool], StageResult]  # (config, stage directory, resume) -> result; collective
    resumable: Callable[[Path], bool]  # whether an interrupted run left work that `run(..., resume=True)` continues
    dir_key: str | None  # the config key the pipeline sets to the stage directory (None: passed to `run`)
    produces_model: bool  # a training run (its HF export: checkpoint.export_hf); evaluated unless eval: false
    count_name: str  # what StageResult.count counts, for the table


def world_barrier() -> None:
    """Wait for every rank: files rank 0 writes at the end of a command (samples.jsonl, results.json) are read
    by all ranks only after it."""
    import torch.distributed as dist

    from r1_megatron.runtime import world_gloo_group

    if dist.get_world_size() > 1:
        dist.barrier(group=world_gloo_group())


def fixed_outputs(outputs: Mapping[str, Output], stage_dir: Path) -> dict[str, str]:
    """The paths of the outputs whose place is fixed (all but what the command returns)."""
    return {name: str(stage_dir / o.path) if o.path != "." else str(stage_dir)
            for name, o in outputs.items() if o.path is not None}


# ---- grpo, sft ----------------------------------------------------------------------------------------------

TRAINED = {"model": Output("hf", True), "checkpoint": Output(".", True), "tokenizer": Output("hf", True)}


def _train(trainer: Callable[[], type]) -> Callable[[object, Path, bool], StageResult]:
    def run(cfg, stage_dir: Path, resume: bool) -> StageResult:
        t = trainer()(cfg, resume=resume)
        t.train()
        return StageResult(fixed_outputs(TRAINED, stage_dir), t.run.step, finished=t.run.step >= t.total_steps)
    return run


def _has_checkpoint(stage_dir: Path) -> bool:
    from r1_megatron.training.checkpoint import latest_checkpoint

    return latest_checkpoint(stage_dir / "checkpoints") is not None


def _grpo_config() -> type:
    from r1_megatron.grpo.config import GRPORunConfig

    return GRPORunConfig


def _grpo_trainer() -> type:
    from r1_megatron.grpo.trainer import GRPOTrainer

    return GRPOTrainer


def _sft_config() -> type:
    from r1_megatron.sft.config import SFTRunConfig

    return SFTRunConfig


def _sft_trainer() -> type:
    from r1_megatron.sft.trainer import SFTTrainer

    return SFTTrainer


# ---- sample -------------------------------------------------------------------------------------------------

SAMPLED = {"samples": Output("samples.jsonl", False)}


def _sample_config() -> type:
    from r1_megatron.sampling.config import SampleRunConfig

    return SampleRunConfig


def _sample(cfg, stage_dir: Path, resume: bool) -> StageResult:
    from r1_megatron.sampling.command import sample

    summary = sample(cfg, keep_process_group=True)  # resumes from OUT/samples.jsonl by itself; same on every rank
    world_barrier()  # rank 0 has closed samples.jsonl before a later stage on any rank reads it
    return StageResult(fixed_outputs(SAMPLED, stage_dir), summary.kept)


def _has_file(name: str) -> Callable[[Path], bool]:
    return lambda stage_dir: (stage_dir / name).is_file()


# ---- eval ---------------------------------------------------------------------------------------------------

EVALUATED = {"results": Output("results.json", False)}


def _eval_config() -> type:
    from r1_megatron.evaluation.config import EvalRunConfig

    return EvalRunConfig


def _eval(cfg, stage_dir: Path, resume: bool) -> StageResult:
    import json

    from r1_megatron.evaluation.command import evaluate

    evaluate(cfg, keep_process_group=True)  # resumes from OUT/samples.jsonl by itself
    world_barrier()
    path = stage_dir / EVALUATED["results"].path
    results = json.loads(path.read_text())["results"]
    return StageResult(fixed_outputs(EVALUATED, stage_dir), sum(r["questions"] for r in results.values()))


# ---- toy_data -----------------------------------------------------------------------------------------------

# what build_toy_assets returns (r1_megatron/pipeline/toy_task.py, docs/toy_pipeline.md)
TOY_ASSETS = {"tokenizer": Output(None, True), "pretrain": Output(None, False),
              "reasoning_prompts": Output(None, False), "general_prompts": Output(None, False),
              "mixed_prompts": Output(None, False), "non_reasoning": Output(None, False),
              "held_out": Output(None, False), "benchmarks": Output(None, False), "reward_model": Output(None, True)}


def _toy_config() -> type:
    from r1_megatron.pipeline.toy_task import ToyDataConfig

    return ToyDataConfig


def _toy_data(cfg, stage_dir: Path, resume: bool) -> StageResult:
    """Rank 0 writes the assets (deterministic, seconds), the other ranks receive their paths."""
    import torch.distributed as dist

    from r1_megatron.runtime import world_gloo_group

    box = [None]
    if dist.get_rank() == 0:
        from r1_megatron.pipeline.toy_task import build_toy_assets

        box[0] = build_toy_assets(stage_dir, cfg)
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0, group=world_gloo_group())
    outputs = dict(box[0])
    if set(outputs) != set(TOY_ASSETS):
        raise ValueError(f"toy_data: build_toy_assets returned outputs {sorted(outputs)}, the pipeline's table "
                         f"declares {sorted(TOY_ASSETS)} (r1_megatron/pipeline/stages.py TOY_ASSETS)")
    return StageResult(outputs, None)


def _never(stage_dir: Path) -> bool:
    return False  # rebuilt from the start: deterministic and quick


# every stage command, by name
STAGE_KINDS: dict[str, StageKind] = {
    "grpo": StageKind("GRPO (r1-megatron train grpo)", _grpo_config, TRAINED, _train(_grpo_trainer),
                      _has_checkpoint, "run_dir", True, "steps"),
    "sft": StageKind("supervised fine-tuning (r1-megatron train sft)", _sft_config, TRAINED, _train(_sft_trainer),
                     _has_checkpoint, "run_dir", True, "steps"),
    "sample": StageKind("rejection sampling (r1-megatron sample)", _sample_config, SAMPLED, _sample,
                        _has_file("samples.jsonl"), "out", False, "samples"),
    "eval": StageKind("evaluation (r1-megatron eval)", _eval_config, EVALUATED, _eval, _has_file("samples.jsonl"),
                      "out", False, "questions"),
    "toy_data": StageKind("the toy pipeline's assets (pipeline/toy_task.py)", _toy_config, TOY_ASSETS, _toy_data,
                          _never, None, False, "assets"),
}
