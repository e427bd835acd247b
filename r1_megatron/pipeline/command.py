"""`r1-megatron pipeline [--config RECIPE] [--print-config] [key=value ...]`: the stages of one recipe, in order,
in this process (under torchrun: on every rank, the process group up across stages, Megatron's parallel state
re-initialised for each stage's layout), each evaluated after it when it produces a model; one table at the end.

Rerunning the same command resumes: a finished stage (STAGE_DIR/stage.json) is skipped; an interrupted grpo/sft
stage resumes from its checkpoint (none: its directory is cleared and it starts over), sample and eval from
their own files; a finished or resumable stage whose config changed is refused, naming the first differing key.
"""
from __future__ import annotations

import gc
import json
import shutil
import time
from pathlib import Path

from r1_megatron.atomic_file import write_text_atomically

from .plan import STAGE_CONFIG, STAGE_RECORD, Pipeline, Stage
from .report import held_out_scores, pipeline_table
from .stages import world_barrier

TABLE_MD, TABLE_JSON = "pipeline.md", "pipeline.json"


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None,
                        help="the pipeline recipe (default: r1_megatron/pipeline/recipes/toy_pipeline.yaml)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the recipe after the overrides as YAML and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. stages.r1_zero.config.steps=50")


def main(args) -> int:
    import torch.distributed as dist

    from r1_megatron.run_config import dump_run_config

    pipeline = Pipeline(args.config, args.overrides)
    if args.print_config:
        print(dump_run_config(pipeline.cfg), end="")
        return 0
    pipeline.validate()  # before any stage runs
    try:
        run_pipeline(pipeline)
    finally:  # every exit path: ranks must not wait on a peer that has left
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def run_pipeline(pipeline: Pipeline) -> list[dict]:
    """Run (or skip) every stage in order; write and print the table (rank 0). Collective."""
    import torch.distributed as dist

    from r1_megatron.runtime import init_distributed

    init_distributed()
    rank0 = dist.get_rank() == 0
    rows: list[dict] = []
    paths: dict[tuple[str, str], str] = {}
    for stage in pipeline.stages:
        row = stage.finished()
        if row is not None:
            _say(rank0, f"pipeline: stage {stage.name} ({stage.spec.command}) finished in an earlier run: skipped")
            row["skipped"] = True
        else:
            row = _run_stage(pipeline, stage, paths, rank0)
        paths |= {(stage.name, output): path for output, path in row["outputs"].items()}
        rows.append(row)
    table = pipeline_table(rows)
    if rank0:
        write_text_atomically(pipeline.run_dir / TABLE_JSON, json.dumps(rows, indent=2) + "\n")
        write_text_atomically(pipeline.run_dir / TABLE_MD, table + "\n")
        print(f"\n{table}\n\npipeline: {pipeline.run_dir / TABLE_MD}", flush=True)
    return rows


def _run_stage(pipeline: Pipeline, stage: Stage, paths, rank0: bool) -> dict:
    from r1_megatron.training.run_stop import RunStopped

    cfg = pipeline.stage_config(stage, paths)  # now with the real paths of the earlier stages' outputs
    eval_cfg = pipeline.eval_config(paths) if stage.evaluated else None
    resume = stage.kind.resumable(stage.dir)
    if rank0:
        if not resume and stage.dir.exists():
            shutil.rmtree(stage.dir)  # killed before anything resumable was kept: it recomputes the same thing
        stage.dir.mkdir(parents=True, exist_ok=True)
        record = pipeline.stage_record(stage, cfg, eval_cfg)
        write_text_atomically(stage.dir / STAGE_CONFIG, json.dumps(record, indent=2) + "\n")
    world_barrier()
    _say(rank0, f"pipeline: stage {stage.name} ({stage.spec.command}): {'resuming' if resume else 'starting'} "
                f"in {stage.dir}")
    started = time.perf_counter()
    result = stage.kind.run(cfg, stage.dir, resume)
    if not result.finished:
        raise RunStopped(f"pipeline: stage {stage.name} stopped early and kept a checkpoint; rerun the same command "
                         "to resume it")
    row = {"stage": stage.name, "command": stage.spec.command, "resumed": resume, "count": result.count,
           "count_name": stage.kind.count_name, "outputs": result.outputs}
    if eval_cfg is not None:
        row["eval"] = _evaluate(pipeline, stage, eval_cfg, result.outputs["model"])
        row["pass@1_before"] = _pass1_before(stage.dir)
    row["wall_s"] = time.perf_counter() - started
    gc.collect()  # the stage's models, engine and optimizer go before the next stage builds its own
    if rank0:
        write_text_atomically(stage.dir / STAGE_RECORD, json.dumps(row, indent=2) + "\n")
    world_barrier()
    return row


def _evaluate(pipeline: Pipeline, stage: Stage, eval_cfg, model_dir: str) -> dict:
    from r1_megatron.evaluation.command import RESULTS_FILE, evaluate

    out = stage.dir / "eval"
    evaluate(eval_cfg.run_config(model_dir, out, pipeline.cfg.seed), keep_process_group=True)
    world_barrier()
    return held_out_scores(json.loads((out / RESULTS_FILE).read_text())["results"])


def _pass1_before(stage_dir: Path) -> float | None:
    """A training stage's own evaluation before its first step (metrics.jsonl step 0), if it ran one."""
    from r1_megatron.training.metrics_log import read_metrics

    try:
        records = read_metrics(stage_dir)
    except FileNotFoundError:
        return None
    return next((r["eval/pass@1"] for r in records if r["step"] == 0 and "eval/pass@1" in r), None)


def _say(rank0: bool, message: str) -> None:
    if rank0:
        print(message, flush=True)
