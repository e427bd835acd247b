"""Benchmark the fused GRPO loss against eager PyTorch, torch.compile and Liger-Kernel (where installed).

    python benchmarks/bench_grpo_loss.py                 # GPU: N=16384 × V=151936 bf16 + a V sweep
    python benchmarks/bench_grpo_loss.py --device cpu    # small shapes (Triton provider needs TRITON_INTERPRET=1)

Times forward, backward and both; peak extra memory; % of the bandwidth floor (1 pass over the logits
forward, 2 backward, 3 in all) from the copy bandwidth measured on the same device. On a new GPU,
`--launch-sweep 4096x8,8192x8,8192x16,16384x16` adds a Triton row per vocab chunk × warps configuration
(the default comes from VocabLaunch.for_vocab).
"""
from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import Case, common_parser, run_benchmark, select_providers, standard_providers  # noqa: E402

from r1_megatron.kernels import grpo_loss, reference  # noqa: E402
from r1_megatron.kernels.backend import LAUNCH_ENV  # noqa: E402

LOSS_KW = dict(clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.04, temperature=1.0)


def make_case(B: int, T: int, V: int, dtype: torch.dtype, device: str) -> Case:
    def make():
        g = torch.Generator(device=device).manual_seed(0)
        logits = torch.randn(B, T, V, generator=g, device=device).to(dtype).requires_grad_()
        targets = torch.randint(0, V, (B, T), generator=g, device=device)
        old = -torch.rand(B, T, generator=g, device=device) * 5 - 8
        ref = old + 0.1 * torch.randn(B, T, generator=g, device=device)
        adv = torch.randn(B, generator=g, device=device)
        mask = torch.ones(B, T, device=device)  # every token counts: no provider gets to skip rows
        return dict(logits=logits, targets=targets, old=old, ref=ref, adv=adv, mask=mask)

    label = {"N": B * T, "V": V, "dtype": str(dtype).removeprefix("torch.")}
    return Case(label, make, B * T * V * dtype.itemsize, {"fwd": 1, "bwd": 2, "fwd+bwd": 3})


def _ours(fn):
    def run(x):
        loss, _ = fn(x["logits"], x["targets"], x["old"], x["ref"], x["adv"], x["mask"], **LOSS_KW)
        return loss
    return run


def liger_provider(skipped: dict):
    """Liger's triton_grpo_loss (DAPO-style token mean), or None with the reason recorded."""
    try:
        from liger_kernel.transformers.grpo_loss import triton_grpo_loss
    except Exception as exc:
        skipped["liger"] = f"liger_kernel not importable ({type(exc).__name__}: {exc})"[:300]
        return None
    params = inspect.signature(triton_grpo_loss).parameters
    extra = {k: v for k, v in dict(loss_type="grpo", reduce=True).items() if k in params}

    def run(x):
        # Liger takes logits of T+1 positions and drops the last one: pad one position (outside its kernel)
        logits = torch.cat([x["logits"], x["logits"][:, -1:]], dim=1) if "padded" not in x else x["padded"]
        out = triton_grpo_loss(logits, x["old"], x["ref"], x["targets"], x["adv"], x["mask"],
                               temperature=LOSS_KW["temperature"], beta=LOSS_KW["kl_coef"],
                               eps_low=LOSS_KW["clip_eps_low"], eps_high=LOSS_KW["clip_eps_high"], inplace=True,
                               **extra)
        loss = out[0] if isinstance(out, tuple) else out
        return loss if loss.dim() == 0 else (loss * x["mask"]).sum() / x["mask"].sum()
    return run


def _with_launch(provider, launch: str):
    """The Triton provider under a forced vocab launch configuration (see VocabLaunch), for --launch-sweep."""
    def run(x):
        saved = os.environ.get(LAUNCH_ENV)
        os.environ[LAUNCH_ENV] = launch
        try:
            return provider(x)
        finally:
            if saved is None:
                del os.environ[LAUNCH_ENV]
            else:
                os.environ[LAUNCH_ENV] = saved
    return run


def providers(device: str, skipped: dict, launch_sweep: list[str]) -> dict:
    found = standard_providers(reference.grpo_loss, grpo_loss, _ours, device, skipped)
    if "triton" in found:
        for launch in launch_sweep:
            found[f"triton[{launch}]"] = _with_launch(_ours(grpo_loss), launch)
    if device == "cuda":
        liger = liger_provider(skipped)
        if liger is not None:
            found["liger"] = liger
    else:
        skipped.setdefault("liger", "Liger-Kernel runs on CUDA only")
    return found


def cases(args) -> list[Case]:
    if args.tiny:
        return [make_case(2, 2, 64, torch.float32, args.device)]
    if args.device == "cpu":
        return [make_case(2, 8, V, torch.float32, args.device) for V in (256, 1000)]
    headline = [make_case(16, 1024, 151936, torch.bfloat16, "cuda")]
    sweep = [make_case(16, 1024, V, torch.bfloat16, "cuda") for V in (32000, 65536, 129280, 262144)]
    return headline + sweep


def main(argv: list[str] | None = None) -> dict:
    parser = common_parser(__doc__.splitlines()[0])
    parser.add_argument("--launch-sweep", default="", help="extra Triton rows per BLOCKxWARPS, e.g. 4096x8,8192x16")
    args = parser.parse_args(argv)
    sweep = [launch for launch in args.launch_sweep.split(",") if launch]
    if sweep:
        from r1_megatron.kernels.softmax_stats_triton import VocabLaunch  # imports triton: only when asked

        for launch in sweep:
            VocabLaunch.parse(launch)  # fail fast on a typo
    skipped: dict[str, str] = {}
    chosen = select_providers(providers(args.device, skipped, sweep), args, skipped)
    repeats = args.repeats or (1 if args.tiny else 3 if args.device == "cpu" else 20)
    return run_benchmark("grpo_loss", cases(args), chosen, skipped, args, grad_of="logits", repeats=repeats)


if __name__ == "__main__":
    main()
