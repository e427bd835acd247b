"""The `r1-megatron` command (also `python -m r1_megatron`)."""
from __future__ import annotations

import argparse
import sys
import warnings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1-megatron", description="DeepSeek-R1-style reasoning RL on Megatron-Core")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("info", help="versions, device and optional backends")
    forward = commands.add_parser("forward", help="build a preset model and run one forward/backward pass")
    forward.add_argument("--preset", default="tiny-moe", help="model preset (default: tiny-moe)")
    forward.add_argument("--batch", type=int, default=4)
    forward.add_argument("--seq-len", type=int, default=32)
    forward.add_argument("--seed", type=int, default=0)
    export = commands.add_parser("export", help="write a training checkpoint's model as an HF directory")
    export.add_argument("--ckpt", required=True, help="a checkpoint directory, or a run's checkpoint root")
    export.add_argument("--out", required=True, help="HF directory to write (replaced atomically)")
    export.add_argument("--tokenizer", default=None, help="directory whose tokenizer files to copy alongside")
    train = commands.add_parser("train", help="train a model (GRPO, R1-Zero style)")
    algorithms = train.add_subparsers(dest="algorithm", metavar="ALGORITHM", required=True)
    grpo = algorithms.add_parser("grpo", help="GRPO: rollout -> rule rewards -> group advantages -> clipped updates",
                                 description="With no arguments: the built-in tiny CPU demo (r1_megatron/grpo/"
                                             "recipes/tiny_demo.yaml). Under torchrun, every rank runs this command.")
    grpo.add_argument("--config", default=None, help="YAML recipe (default: the built-in tiny demo)")
    grpo.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    grpo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. steps=50 algorithm.kl_coef=0.01")
    plot = commands.add_parser("plot", help="write PNG charts of a run's metrics (reward, accuracy, length, KL)")
    plot.add_argument("run_dir")
    return parser


def _train(args) -> int:
    from r1_megatron.grpo.main import run_grpo

    return run_grpo(args.config, args.resume, args.overrides)


def _plot(args) -> int:
    from r1_megatron.plotting import plot_run

    for path in plot_run(args.run_dir):
        print(path)
    return 0


def _export(args) -> int:
    from r1_megatron.training.checkpoint import export_checkpoint_to_hf

    out = export_checkpoint_to_hf(args.ckpt, args.out, tokenizer_dir=args.tokenizer)
    print(f"exported {args.ckpt} -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    # megatron-core warns at import time on every machine without TE/Apex; `r1-megatron info` reports backends
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed")
    from r1_megatron.grpo.reward_health import RewardFailure  # light: no torch

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "info":
            from r1_megatron.info import main as run
        elif args.command == "export":
            run = _export
        elif args.command == "train":
            run = _train
        elif args.command == "plot":
            run = _plot
        else:
            from r1_megatron.forward_check import main as run
        return run(args)
    except (ValueError, FileNotFoundError, FileExistsError, RewardFailure) as exc:
        print(f"r1-megatron {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
