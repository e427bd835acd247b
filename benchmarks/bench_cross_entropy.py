"""Benchmark the fused cross-entropy against eager PyTorch (the reference: fp32 log_softmax) and torch.compile.

    python benchmarks/bench_cross_entropy.py                 # GPU: N=16384 × V=151936 bf16 + a V sweep
    python benchmarks/bench_cross_entropy.py --device cpu    # small shapes (Triton provider needs TRITON_INTERPRET=1)

The loss is Σ w·CE with per-token weights w (an SFT loss mask, every token counted so no provider skips rows).
Bandwidth floor over the logits' bytes: forward reads them once, backward reads them and writes the gradient
(2 passes), 3 in all.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import Case, common_parser, run_benchmark, select_providers, standard_providers  # noqa: E402

from r1_megatron.kernels import cross_entropy, reference  # noqa: E402


def make_case(B: int, T: int, V: int, dtype: torch.dtype, device: str) -> Case:
    def make():
        g = torch.Generator(device=device).manual_seed(0)
        logits = torch.randn(B, T, V, generator=g, device=device).to(dtype).requires_grad_()
        targets = torch.randint(0, V, (B, T), generator=g, device=device)
        return dict(logits=logits, targets=targets, weights=torch.ones(B, T, device=device))

    label = {"N": B * T, "V": V, "dtype": str(dtype).removeprefix("torch.")}
    return Case(label, make, B * T * V * dtype.itemsize, {"fwd": 1, "bwd": 2, "fwd+bwd": 3})


def _provider(fn):
    def run(x):
        return (fn(x["logits"], x["targets"]) * x["weights"]).sum()
    return run


def providers(device: str, skipped: dict) -> dict:
    return standard_providers(reference.cross_entropy, cross_entropy, _provider, device, skipped)


def cases(args) -> list[Case]:
    if args.tiny:
        return [make_case(2, 2, 64, torch.float32, args.device)]
    if args.device == "cpu":
        return [make_case(2, 8, V, torch.float32, args.device) for V in (256, 1000)]
    headline = [make_case(16, 1024, 151936, torch.bfloat16, "cuda")]
    sweep = [make_case(16, 1024, V, torch.bfloat16, "cuda") for V in (32000, 129280)]
    return headline + sweep


def main(argv: list[str] | None = None) -> dict:
    args = common_parser(__doc__.splitlines()[0]).parse_args(argv)
    skipped: dict[str, str] = {}
    chosen = select_providers(providers(args.device, skipped), args, skipped)
    repeats = args.repeats or (1 if args.tiny else 3 if args.device == "cpu" else 20)
    return run_benchmark("cross_entropy", cases(args), chosen, skipped, args, grad_of="logits", repeats=repeats)


if __name__ == "__main__":
    main()
