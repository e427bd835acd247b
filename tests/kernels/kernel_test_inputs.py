"""Random GRPO inputs and float64 gold values shared by the kernel tests (and the TP worker)."""
from __future__ import annotations

import dataclasses

import torch

from r1_megatron.kernels import reference


@dataclasses.dataclass
class LossInputs:
    logits: torch.Tensor  # [B, T, V] fp32 (the "true" values; lower precisions are rounded from these)
    targets: torch.Tensor
    old: torch.Tensor
    ref: torch.Tensor | None
    adv: torch.Tensor
    mask: torch.Tensor

    def args(self, logits: torch.Tensor | None = None):
        return (self.logits if logits is None else logits, self.targets, self.old, self.ref, self.adv, self.mask)


def make_inputs(B, T, V, *, seed, adv_per_token=False, empty_rows=(), with_ref=True, mask_dtype=torch.bool,
                temperature=1.0, old_noise=0.3) -> LossInputs:
    """Logits of scale ~2; old/ref log-probs near the true ones so ratios straddle the clip range
    (old_noise ≈ 1 makes ratios above a dual-clip constant common)."""
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(B, T, V, generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    logp = reference.token_logprobs(logits.double(), targets, temperature=temperature).float()
    old = logp + old_noise * torch.randn(B, T, generator=g)
    ref = logp + 0.2 * torch.randn(B, T, generator=g) if with_ref else None
    adv = torch.randn((B, T) if adv_per_token else (B,), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.25
    mask[:, 0] = True
    for b in empty_rows:
        mask[b] = False
    if mask_dtype is not torch.bool:
        mask = mask.to(mask_dtype) * (0.5 + torch.rand(B, T, generator=g)).to(mask_dtype)  # weighted mask
    return LossInputs(logits, targets, old, ref, adv, mask)


def gold_loss(inp: LossInputs, **kw):
    """Float64 reference: (loss, stats, d loss / d logits)."""
    x = inp.logits.double().requires_grad_()
    ref = None if inp.ref is None else inp.ref.double()
    loss, stats = reference.grpo_loss(x, inp.targets, inp.old.double(), ref, inp.adv.double(), inp.mask, **kw)
    loss.backward()
    return loss.detach(), stats, x.grad


def run_loss(fn, inp: LossInputs, logits: torch.Tensor, **kw):
    """(loss, stats, grad) of `fn` on `logits` (a leaf copy is made so the grad lands on it)."""
    x = logits.detach().clone().requires_grad_()
    loss, stats = fn(*inp.args(x), **kw)
    loss.backward()
    return loss.detach(), stats, x.grad


def rel_err(actual: torch.Tensor, gold: torch.Tensor, floor: float = 1e-12) -> float:
    """max |actual − gold| / max(max |gold|, floor) (scale-relative, so entries near zero do not dominate)."""
    scale = gold.abs().max().clamp_min(floor)
    return ((actual.double() - gold.double()).abs().max() / scale).item()


def dual_clip_active(inp: LossInputs, c: float, temperature: float = 1.0) -> int:
    """Number of mask tokens where the dual clip binds (A < 0 and ρ > c), so tests can insist it is exercised."""
    logp = reference.token_logprobs(inp.logits.double(), inp.targets, temperature=temperature)
    adv = inp.adv if inp.adv.dim() == 2 else inp.adv[:, None].expand_as(logp)
    return int(((adv < 0) & (torch.exp(logp - inp.old.double()) > c) & (inp.mask != 0)).sum())


def allocation_recorder(monkeypatch, record=lambda t: t):
    """A TorchDispatchMode class whose instances keep `record(tensor)` (in `.records`) of every tensor our code
    allocates while they are active; the copies Triton's interpreter makes of kernel arguments are not ours and
    are left out. Keeping the tensors themselves keeps them alive, which can change what autograd allocates next
    (buffers it could otherwise reuse): pass e.g. `record=torch.Tensor.numel` to count without holding them."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from triton.runtime import interpreter

    in_kernel = []
    launch = interpreter.GridExecutor.__call__

    def launch_unrecorded(self, *args, **kwargs):
        in_kernel.append(True)
        try:
            return launch(self, *args, **kwargs)
        finally:
            in_kernel.pop()

    monkeypatch.setattr(interpreter.GridExecutor, "__call__", launch_unrecorded)

    class Allocations(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.records = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not in_kernel:
                self.records += [record(o) for o in (out if isinstance(out, (tuple, list)) else [out])
                                 if isinstance(o, torch.Tensor)]
            return out

    return Allocations
