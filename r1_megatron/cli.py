"""The `r1-megatron` command (also `python -m r1_megatron`)."""
from __future__ import annotations

import argparse
import sys

from r1_megatron import warning_filters


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1-megatron", description="DeepSeek-R1-style reasoning RL on Megatron-Core")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("info", help="versions, device and optional backends")
    forward = commands.add_parser("forward", help="build a preset model and run one forward/backward pass")
    forward.add_argument("--preset", default="tiny-moe", help="model preset (default: tiny-moe)")
    forward.add_argument("--batch", type=int, default=4)
    forward.add_argument("--seq-len", type=int, default=32)
    forward.add_argument("--seed", type=int, default=0)
    export = commands.add_parser("export", help="write a training checkpoint's model as an HF directory",
                                 description="Under torchrun, every rank runs this command (with --tp/--pp/--ep for "
                                             "models too big for one process).")
    export.add_argument("--ckpt", required=True,
                        help="a run directory, a checkpoint root (its latest checkpoint) or one checkpoint directory")
    export.add_argument("--out", required=True, help="HF directory to write (replaced atomically)")
    export.add_argument("--tokenizer", default=None,
                        help="directory whose tokenizer files to copy (default: the run's, as the checkpoint records)")
    for size in ("tp", "pp", "ep"):
        export.add_argument(f"--{size}", type=int, default=1, help=f"{size.upper()} size to load the model at")
    export.add_argument("--etp", type=int, default=None, help="expert-TP size (default: --tp)")
    train = commands.add_parser("train", help="train a model (GRPO, R1-Zero style)")
    algorithms = train.add_subparsers(dest="algorithm", metavar="ALGORITHM", required=True)
    grpo = algorithms.add_parser("grpo", help="GRPO: rollout -> rule rewards -> group advantages -> clipped updates",
                                 description="With no arguments: the built-in tiny CPU demo (r1_megatron/grpo/"
                                             "recipes/tiny_demo.yaml). Under torchrun, every rank runs this command.")
    grpo.add_argument("--config", default=None, help="YAML recipe (default: the built-in tiny demo)")
    grpo.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    grpo.add_argument("--print-config", action="store_true",
                      help="print the fully resolved config (every key, defaults included) as YAML and exit")
    grpo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. steps=50 algorithm.kl_coef=0.01")
    plot = commands.add_parser("plot", help="write PNG charts of a run's metrics (reward, accuracy, length, KL)")
    plot.add_argument("run_dir")
    return parser


def _train(args) -> int:
    from r1_megatron.grpo.main import run_grpo

    return run_grpo(args.config, args.resume, args.overrides, print_config=args.print_config)


def _plot(args) -> int:
    from r1_megatron.plotting import plot_run

    for path in plot_run(args.run_dir):
        print(path)
    return 0


def _export(args) -> int:
    import torch.distributed as dist

    from r1_megatron.runtime import ParallelConfig
    from r1_megatron.training.checkpoint import export_checkpoint_to_hf

    parallel = ParallelConfig(tp=args.tp, pp=args.pp, ep=args.ep, etp=args.etp)
    result = export_checkpoint_to_hf(args.ckpt, args.out, tokenizer_dir=args.tokenizer, parallel=parallel)
    if dist.get_rank() == 0:
        print(f"exported step {result.step} ({result.checkpoint}) -> {result.out}")
        if result.tokenizer_dir is None:
            print("no tokenizer files were copied: the checkpoint records no tokenizer directory (--tokenizer DIR)")
    return 0


def _info(args) -> int:
    from r1_megatron.info import main as run

    return run(args)


def _forward(args) -> int:
    from r1_megatron.forward_check import main as run

    return run(args)


# every subcommand of build_parser, by name: an unknown name is a KeyError here, never another command
COMMANDS = {"info": _info, "forward": _forward, "export": _export, "train": _train, "plot": _plot}


def main(argv: list[str] | None = None) -> int:
    warning_filters.install()  # before any command imports megatron-core, which warns at import time
    from r1_megatron.grpo.reward_health import RewardFailure  # light: no torch

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError, RewardFailure) as exc:
        print(f"r1-megatron {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
