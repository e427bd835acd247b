"""Time per call of token sampling from [B, V] logits.

Bare Gumbel-max (token only, setting "plain"): the seeded CUDA kernel (r1_megatron._C, "cuda_kernel"), the same
Gumbel-max in pure torch (r1_megatron.sampling_noise, "torch_gumbel") and the unseeded baseline softmax +
multinomial ("torch_multinomial"). The engine's whole sampler (token + logprob, rollout.sampler
SamplingBatch.sample) per row setting: the torch path ("sample_torch") and the fused Triton kernel
("sample_triton": on a GPU, or through Triton's interpreter under TRITON_INTERPRET=1), which must draw the torch
path's tokens or the run fails. Settings: "plain" T = 0.7; "r1_eval" T = 0.6, top-p 0.95 (a sort per row);
"top_k" T = 1, top-k 20 (a top-k per row).

    python benchmarks/bench_sampling.py                       # CUDA: B in {32, 256} x V = 151936, bf16
    python benchmarks/bench_sampling.py --device cpu          # CPU: tiny shapes, a smoke run of the harness
    python benchmarks/bench_sampling.py --out results.json    # also write the JSON report to a file

Prints one JSON object: {"benchmark", "device", "torch", "dtype", "cuda_kernel_built", "results": [{"method",
"setting", "batch", "vocab", "ms_per_call"}]}. Methods that cannot run here (the kernels without a GPU) are omitted.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import torch

from r1_megatron.kernels.backend import interpreting
from r1_megatron.rollout import SamplingBatch, SamplingParams
from r1_megatron.sampling_noise import SamplingImpl, cuda_kernel_available, gumbel_argmax

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GPU_DEFAULTS = {"batch_sizes": [32, 256], "vocab": 151936, "iters": 50, "warmup": 5}
CPU_DEFAULTS = {"batch_sizes": [2, 4], "vocab": 1024, "iters": 3, "warmup": 1}
SETTINGS = {"plain": SamplingParams(temperature=0.7), "r1_eval": SamplingParams(temperature=0.6, top_p=0.95),
            "top_k": SamplingParams(temperature=1.0, top_k=20)}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--out", default=None, help="also write the JSON report here")
    args = p.parse_args(argv)
    defaults = GPU_DEFAULTS if args.device == "cuda" else CPU_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.batch_sizes) < 1 or args.vocab < 1 or args.iters < 1 or args.warmup < 0:
        raise ValueError(f"batch sizes, vocab and iters must be >= 1 and warmup >= 0, got {vars(args)}")
    return args


def _ms_per_call(fn: Callable[[], object], device: str, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) * 1e3 / iters


def _gumbel_methods(logits_BV, temperature_B, seeds_B, steps_B) -> dict[str, Callable[[], torch.Tensor]]:
    def multinomial():
        probs_BV = torch.softmax(logits_BV.float() / temperature_B[:, None], dim=-1)
        return torch.multinomial(probs_BV, 1)[:, 0]

    methods = {
        "torch_multinomial": multinomial,
        "torch_gumbel": lambda: gumbel_argmax(logits_BV, temperature_B, seeds_B, steps_B, SamplingImpl.TORCH),
    }
    if logits_BV.is_cuda and cuda_kernel_available():
        methods["cuda_kernel"] = lambda: gumbel_argmax(logits_BV, temperature_B, seeds_B, steps_B, SamplingImpl.CUDA)
    return methods


def _sampler_methods(logits_BV, batch: SamplingBatch) -> dict[str, Callable[[], object]]:
    methods = {"sample_torch": lambda: batch.sample(logits_BV, SamplingImpl.TORCH)}
    if logits_BV.is_cuda or interpreting():  # CPU + TRITON_INTERPRET=1: the suite's smoke run of the check
        methods["sample_triton"] = lambda: batch.sample(logits_BV, SamplingImpl.TRITON)
        _check_same_tokens(methods["sample_triton"](), methods["sample_torch"]())
    return methods


def _check_same_tokens(fused, torch_path) -> None:
    """The timed kernel must draw the torch path's tokens (a GPU check the CPU test suite cannot make)."""
    if not torch.equal(fused.tokens_B, torch_path.tokens_B):
        bad = (fused.tokens_B != torch_path.tokens_B).nonzero()[:, 0].tolist()
        raise RuntimeError(f"sample_triton and sample_torch drew different tokens in rows {bad}")
    gap = (fused.logprobs_B - torch_path.logprobs_B).abs().max().item()
    if not gap <= 1e-4:
        raise RuntimeError(f"sample_triton and sample_torch logprobs differ by up to {gap:.2e}")


def run(args: argparse.Namespace) -> dict:
    gen = torch.Generator().manual_seed(0)
    results = []
    for batch in args.batch_sizes:
        logits_BV = (torch.randn(batch, args.vocab, generator=gen) * 3).to(DTYPES[args.dtype]).to(args.device)
        seeds, steps = [1234 + b for b in range(batch)], [17] * batch
        for setting, params in SETTINGS.items():
            rows = SamplingBatch.from_rows([params] * batch, seeds, steps, device=args.device)
            methods = _sampler_methods(logits_BV, rows)
            if setting == "plain":
                methods = {**_gumbel_methods(logits_BV, rows.temperature_B, rows.seeds_B, rows.steps_B), **methods}
            for method, fn in methods.items():
                ms = _ms_per_call(fn, args.device, args.iters, args.warmup)
                results.append({"method": method, "setting": setting, "batch": batch, "vocab": args.vocab,
                                "ms_per_call": round(ms, 4)})
    return {"benchmark": "sampling", "device": _device_name(args.device), "torch": torch.__version__,
            "dtype": args.dtype, "cuda_kernel_built": cuda_kernel_available(), "results": results}


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
