"""Body of the TP=2 test: runs in each of 2 gloo processes (spawned by test_kernel_tensor_parallel.py).

Every rank builds the same inputs, keeps its contiguous vocab slice of the logits (Megatron's vocab-parallel
layout) and checks that loss, stats, token_logprobs, cross_entropy and the all-gathered gradients equal the TP=1
result, and that the Triton path issues exactly one collective in forward and none in backward.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from kernel_test_inputs import make_inputs, rel_err, run_loss

from r1_megatron.kernels import cross_entropy, grpo_loss, token_logprobs
from r1_megatron.kernels.backend import FORCE_ENV

V_LOCAL = 37  # odd on purpose; the full vocab is 74 and targets land on both ranks
CASES = [  # (backend, logits dtype, input options, loss options, tolerance)
    ("triton", torch.float32, dict(empty_rows=(1,), temperature=0.8, old_noise=1.0),
     dict(loss_agg="seq-mean-token-mean", temperature=0.8, dual_clip=2.0), 2e-6),
    ("triton", torch.float32, dict(adv_per_token=True),
     dict(loss_agg="token-mean", kl_estimator="k2", clip_eps_high=0.28, kl_coef=0.1), 2e-6),
    ("triton", torch.bfloat16, dict(), dict(loss_agg="seq-mean-token-sum-norm", norm_length=8), 1e-2),
    ("torch", torch.float32, dict(adv_per_token=True), dict(loss_agg="seq-mean-token-sum", dual_clip=3.0), 2e-6),
]


class CollectiveCounter:
    """Counts calls of every all-gather flavour (the Triton path must use exactly one per forward)."""

    NAMES = ("all_gather_single", "all_gather_into_tensor", "all_gather", "all_reduce")

    def __init__(self):
        self.calls = 0
        self._saved = {n: getattr(dist, n) for n in self.NAMES if hasattr(dist, n)}

    def __enter__(self):
        for name, fn in self._saved.items():
            setattr(dist, name, self._counted(fn))
        return self

    def __exit__(self, *exc):
        for name, fn in self._saved.items():
            setattr(dist, name, fn)

    def _counted(self, fn):
        def wrapper(*args, **kwargs):
            self.calls += 1
            return fn(*args, **kwargs)
        return wrapper


def _gather_vocab(x_local: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x_local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x_local.contiguous())
    return torch.cat(parts, dim=-1)


def _check_case(rank: int, backend: str, dtype, input_kw: dict, loss_kw: dict, tol: float) -> None:
    os.environ[FORCE_ENV] = backend
    inp = make_inputs(3, 4, 2 * V_LOCAL, seed=len(input_kw) * 10 + len(loss_kw), **input_kw)
    full = inp.logits.to(dtype)
    shard = full[..., rank * V_LOCAL:(rank + 1) * V_LOCAL]
    loss1, stats1, grad1 = run_loss(grpo_loss, inp, full, **loss_kw)

    x = shard.detach().clone().requires_grad_()
    with CollectiveCounter() as fwd:
        loss2, stats2 = grpo_loss(*inp.args(x), **loss_kw, tp_group=dist.group.WORLD)
    with CollectiveCounter() as bwd:
        loss2.backward()
    if backend == "triton":
        assert (fwd.calls, bwd.calls) == (1, 0), (fwd.calls, bwd.calls)
    # relative above 1, absolute below: the loss and mean KL are signed sums that can cancel
    assert rel_err(loss2, loss1, floor=1.0) < tol, (backend, loss2, loss1)
    for key in stats1:
        assert rel_err(stats2[key], stats1[key], floor=1.0) < tol, (backend, key)
    assert rel_err(_gather_vocab(x.grad), grad1) < tol, backend

    temperature = loss_kw.get("temperature", 1.0)
    lp1 = token_logprobs(full, inp.targets, temperature=temperature)
    lp2 = token_logprobs(shard, inp.targets, temperature=temperature, tp_group=dist.group.WORLD)
    assert rel_err(lp2, lp1) < tol, backend


CE_CASES = [("triton", torch.float32, 2e-6), ("triton", torch.bfloat16, 1e-2), ("torch", torch.float32, 2e-6)]


def _check_cross_entropy(rank: int, backend: str, dtype, tol: float) -> None:
    """CE and its gathered gradient at TP2 equal TP1; targets on both ranks, one ignored (−100), zero weights."""
    os.environ[FORCE_ENV] = backend
    g = torch.Generator().manual_seed(5)
    full = (3.0 * torch.randn(3, 5, 2 * V_LOCAL, generator=g)).to(dtype)
    targets = torch.randint(0, 2 * V_LOCAL, (3, 5), generator=g)
    targets[1, 2] = -100
    weights = (torch.rand(3, 5, generator=g) > 0.3).float()
    x1 = full.detach().clone().requires_grad_()
    ce1 = cross_entropy(x1, targets)
    (ce1 * weights).sum().backward()
    x2 = full[..., rank * V_LOCAL:(rank + 1) * V_LOCAL].detach().clone().requires_grad_()
    with CollectiveCounter() as fwd:
        ce2 = cross_entropy(x2, targets, tp_group=dist.group.WORLD)
    with CollectiveCounter() as bwd:
        (ce2 * weights).sum().backward()
    if backend == "triton":
        assert (fwd.calls, bwd.calls) == (1, 0), (fwd.calls, bwd.calls)
    assert rel_err(ce2, ce1) < tol, backend
    assert rel_err(_gather_vocab(x2.grad), x1.grad) < tol, backend


def run(rank: int, world_size: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=180))
    try:
        for case in CASES:
            _check_case(rank, *case)
        for case in CE_CASES:
            _check_cross_entropy(rank, *case)
    finally:
        dist.destroy_process_group()
