"""Triton: group-normalised GRPO advantages in one launch, with a device-side non-finite-reward report.

A single program walks all groups in [BLOCK_G, BLOCK_S] tiles (a whole group per tile row): B is at most a few
ten thousand rewards, so one program finishes in microseconds and needs neither atomics nor a second launch
to reduce the error report. status = [ok (int64 0/1), index of the first non-finite reward or B].
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .options import AdvantageStd

_STD_CODE = {AdvantageStd.NONE: 0, AdvantageStd.SAMPLE: 1, AdvantageStd.POPULATION: 2}


# not specialised: an int argument equal to 1 would otherwise become a constexpr without .to()
@triton.jit(do_not_specialize=["n_groups", "group_size"])
def _group_advantage_kernel(rewards_ptr, adv_ptr, status_ptr, n_groups, group_size, eps, STD_KIND: tl.constexpr,
                            BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr):
    numel = n_groups.to(tl.int64) * group_size
    first_bad = numel
    cols = tl.arange(0, BLOCK_S)[None, :]
    for g0 in tl.range(0, n_groups, BLOCK_G):
        rows = g0 + tl.arange(0, BLOCK_G)[:, None]
        valid = (rows < n_groups) & (cols < group_size)
        idx = rows.to(tl.int64) * group_size + cols
        r = tl.load(rewards_ptr + idx, mask=valid, other=0.0).to(tl.float32)
        bad = valid & ((r != r) | (tl.abs(r) == float("inf")))
        r = tl.where(bad, 0.0, r)  # the call fails anyway; keep inf - inf out of the arithmetic
        first_bad = tl.minimum(first_bad, tl.min(tl.min(tl.where(bad, idx, numel), axis=1), axis=0))
        centred = tl.where(valid, r - tl.sum(r, axis=1)[:, None] / group_size, 0.0)
        adv = centred
        if STD_KIND != 0:
            dof = tl.maximum(group_size - 1, 1) if STD_KIND == 1 else group_size
            std = tl.sqrt(tl.sum(centred * centred, axis=1) / dof)
            den = std[:, None] + eps
            adv = centred / tl.where(den > 0, den, 1.0)  # eps = 0 on an all-equal group: 0/0 before the fix-up below
        # all-equal groups (and groups of one) get exactly 0, not rounding noise divided by eps
        r_max = tl.max(tl.where(valid, r, float("-inf")), axis=1)
        r_min = tl.min(tl.where(valid, r, float("inf")), axis=1)
        adv = tl.where((r_max == r_min)[:, None], 0.0, adv)
        tl.store(adv_ptr + idx, adv.to(adv_ptr.dtype.element_ty), mask=valid)
    tl.store(status_ptr, (first_bad == numel).to(tl.int64))
    tl.store(status_ptr + 1, first_bad)


def group_advantages(rewards_B: torch.Tensor, group_size: int, kind: AdvantageStd, eps: float):
    """Launch → (advantages [B] in the rewards' float dtype, status [2] int64 as described above)."""
    out_dtype = rewards_B.dtype if rewards_B.is_floating_point() else torch.float32
    rewards_B = rewards_B.contiguous() if rewards_B.is_floating_point() else rewards_B.to(torch.float32)
    adv_B = torch.empty_like(rewards_B, dtype=out_dtype)
    status = torch.empty(2, dtype=torch.int64, device=rewards_B.device)
    block_s = triton.next_power_of_2(group_size)
    n_groups = rewards_B.numel() // group_size
    block_g = min(max(4096 // block_s, 1), triton.next_power_of_2(max(n_groups, 1)))
    _group_advantage_kernel[(1,)](rewards_B, adv_B, status, n_groups, group_size, eps, STD_KIND=_STD_CODE[kind],
                                  BLOCK_G=block_g, BLOCK_S=block_s, num_warps=4)
    return adv_B, status
