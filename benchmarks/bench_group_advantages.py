"""Benchmark group_advantages (one Triton launch) against eager PyTorch and torch.compile of the reference.

    python benchmarks/bench_group_advantages.py               # GPU: B in {512, 8192, 65536}, G = 16
    python benchmarks/bench_group_advantages.py --device cpu  # small shapes (Triton needs TRITON_INTERPRET=1)

Forward only (advantages carry no gradient). The floor (read B rewards, write B advantages) is far below
launch latency at these sizes; the useful number is the absolute time, i.e. how little it costs in a step.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import Case, common_parser, run_benchmark, select_providers, standard_providers  # noqa: E402

from r1_megatron.kernels import group_advantages, reference  # noqa: E402

GROUP = 16


def make_case(B: int, device: str) -> Case:
    def make():
        g = torch.Generator(device=device).manual_seed(0)
        return dict(rewards=torch.randint(0, 2, (B,), generator=g, device=device).float())

    return Case({"B": B, "group": GROUP}, make, B * 4, {"fwd": 2})


def _provider(fn):
    return lambda inputs: fn(inputs["rewards"], GROUP)


def providers(device: str, skipped: dict) -> dict:
    return standard_providers(reference.group_advantages, group_advantages, _provider, device, skipped)


def cases(args) -> list[Case]:
    if args.tiny:
        return [make_case(32, args.device)]
    if args.device == "cpu":
        return [make_case(B, args.device) for B in (256, 4096)]
    return [make_case(B, "cuda") for B in (512, 8192, 65536)]


def main(argv: list[str] | None = None) -> dict:
    args = common_parser(__doc__.splitlines()[0]).parse_args(argv)
    skipped: dict[str, str] = {}
    chosen = select_providers(providers(args.device, skipped), args, skipped)
    repeats = args.repeats or (1 if args.tiny else 5 if args.device == "cpu" else 100)
    return run_benchmark("group_advantages", cases(args), chosen, skipped, args, grad_of=None, repeats=repeats)


if __name__ == "__main__":
    main()
