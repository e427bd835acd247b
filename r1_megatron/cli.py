"""The `r1-megatron` command (also `python -m r1_megatron`)."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1-megatron", description="DeepSeek-R1-style reasoning RL on Megatron-Core")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("info", help="versions, device and optional backends")
    forward = commands.add_parser("forward", help="build a preset model and run one forward/backward pass")
    forward.add_argument("--preset", default="tiny-moe", help="model preset (default: tiny-moe)")
    forward.add_argument("--batch", type=int, default=4)
    forward.add_argument("--seq-len", type=int, default=32)
    forward.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "info":
            from r1_megatron.info import main as run
        else:
            from r1_megatron.forward_check import main as run
        return run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"r1-megatron {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
