"""`r1-megatron train grpo`: load the recipe, train, and say where the results are."""
from __future__ import annotations

import time
from pathlib import Path


def resolve_run(config_path: str | None, resume: str | None, overrides: list[str]):
    """The run config: the recipe (default: the built-in tiny demo) + overrides, or, with --resume, the resumed
    run's own saved config.yaml + overrides."""
    from r1_megatron.run_config import load_run_config

    if resume is not None:
        saved = Path(resume) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume {resume}: no config.yaml there (not a run directory)")
        return load_run_config(str(saved), overrides)
    return load_run_config(config_path, overrides)


def run_grpo(config_path: str | None, resume: str | None, overrides: list[str], *, print_config: bool = False) -> int:
    import torch.distributed as dist

    from r1_megatron.grpo.trainer import GRPOTrainer
    from r1_megatron.run_config import dump_run_config

    cfg = resolve_run(config_path, resume, overrides)
    if print_config:  # a recipe to start from: `r1-megatron train grpo --print-config > my_recipe.yaml`
        print(dump_run_config(cfg), end="")
        return 0
    if resume is None:
        cfg.run_dir = cfg.run_dir.replace("{time}", time.strftime("%Y%m%d-%H%M%S"))
    started = time.perf_counter()
    try:
        trainer = GRPOTrainer(cfg, resume=resume is not None)
        run_dir = trainer.train()
    finally:  # every exit path, errors included: ranks must not wait on a peer that has left
        if dist.is_initialized():
            dist.destroy_process_group()
    if trainer.rank == 0:
        print(f"\nrun finished in {time.perf_counter() - started:.0f} s (step {trainer.step}/{cfg.steps})")
        print(f"  run directory: {run_dir}")
        print(f"  metrics:       {run_dir / 'metrics.jsonl'}  (TensorBoard: {run_dir / 'tensorboard'})")
        print(f"  plots:         {run_dir / 'plots' / 'summary.png'}")
        print(f"  checkpoints:   {run_dir / 'checkpoints'}")
        if (run_dir / "hf").is_dir():
            print(f"  HF model:      {run_dir / 'hf'}")
    return 0
