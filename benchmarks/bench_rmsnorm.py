"""Benchmark the RMSNorm kernel against eager PyTorch and torch.compile of the reference.

    python benchmarks/bench_rmsnorm.py                   # GPU: 16384 tokens × H in {4096, 7168, 8192}, bf16
    python benchmarks/bench_rmsnorm.py --device cpu      # small shapes (Triton provider needs TRITON_INTERPRET=1)

Bandwidth floor over x's bytes: forward reads x and writes y (2 passes), backward reads x and dy and writes
dx (3 passes; the [H] weight and its gradient are negligible).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import Case, common_parser, run_benchmark, select_providers, standard_providers  # noqa: E402

from r1_megatron.kernels import reference, rms_norm  # noqa: E402

EPS = 1e-6


def make_case(M: int, H: int, dtype: torch.dtype, device: str) -> Case:
    def make():
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(M, H, generator=g, device=device).to(dtype).requires_grad_()
        w = (1 + 0.1 * torch.randn(H, generator=g, device=device)).to(dtype).requires_grad_()
        return dict(x=x, w=w, dy=torch.randn(M, H, generator=g, device=device).to(dtype))

    label = {"M": M, "H": H, "dtype": str(dtype).removeprefix("torch.")}
    return Case(label, make, M * H * dtype.itemsize, {"fwd": 2, "bwd": 3, "fwd+bwd": 5})


def _provider(fn):
    def run(inputs):
        # <y, dy> has gradient dy w.r.t. y, so backward of this scalar is the norm's backward with upstream dy
        return (fn(inputs["x"], inputs["w"], EPS) * inputs["dy"]).sum()
    return run


def providers(device: str, skipped: dict) -> dict:
    return standard_providers(reference.rms_norm, rms_norm, _provider, device, skipped)


def cases(args) -> list[Case]:
    if args.tiny:
        return [make_case(4, 33, torch.float32, args.device)]
    if args.device == "cpu":
        return [make_case(64, H, torch.float32, args.device) for H in (127, 512)]
    return [make_case(16384, H, torch.bfloat16, "cuda") for H in (4096, 7168, 8192)]


def main(argv: list[str] | None = None) -> dict:
    args = common_parser(__doc__.splitlines()[0]).parse_args(argv)
    skipped: dict[str, str] = {}
    chosen = select_providers(providers(args.device, skipped), args, skipped)
    repeats = args.repeats or (1 if args.tiny else 3 if args.device == "cpu" else 50)
    return run_benchmark("rmsnorm", cases(args), chosen, skipped, args, grad_of="x", repeats=repeats)


if __name__ == "__main__":
    main()
