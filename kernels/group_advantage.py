"""Group-normalised GRPO advantages (DeepSeekMath §4.1); dispatches Triton or reference."""
from __future__ import annotations

import torch

from . import reference
from .backend import Backend, select_backend, triton_module
from .options import AdvantageStd, check_rewards, parse_enum


def group_advantages(rewards: torch.Tensor, group_size: int, *, std: str | AdvantageStd = "sample",
                     eps: float = 1e-6) -> torch.Tensor:
    """Â_i = (r_i − mean_g) / (std_g + eps) within each group of `group_size` adjacent rewards: [B] → [B].

    std: "sample" (N−1, default), "population" (N) or "none" (Dr.GRPO: r − mean). A group whose rewards are all
    equal, and every group of size 1, gets 0. Non-finite (NaN/inf) rewards are rejected:
      - CPU tensors: ValueError naming the first bad index and its group (the check is free there);
      - CUDA tensors: the single kernel launch also writes a device-side flag that feeds
        `torch._assert_async`, so nothing waits on the host; a bad reward then fails the process at the next
        synchronisation with "group_advantages: non-finite reward" (and the CUDA context is unusable after,
        which is acceptable: a NaN reward is a bug upstream, training must not go on).
    """
    kind = parse_enum(AdvantageStd, std, "std")
    check_rewards(rewards, group_size, eps)
    if select_backend(rewards) is Backend.TORCH:
        return reference.group_advantages(rewards, group_size, std=kind, eps=eps)
    adv_B, status = triton_module("group_advantage_triton").group_advantages(rewards, group_size, kind, eps)
    if rewards.is_cuda:
        torch._assert_async(status[0], "group_advantages: non-finite reward (NaN or inf) in rewards")
    elif not status[0]:
        i = int(status[1])
        raise ValueError(f"rewards[{i}]={rewards[i].item()} (group {i // group_size}) is not finite")
    return adv_B
