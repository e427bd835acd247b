"""Per-step statistics summed on each rank and reduced over data-parallel ranks in one all-reduce."""
from __future__ import annotations

import collections

import torch
import torch.distributed as dist

from r1_megatron.runtime import collective_device


class StepStats:
    """mean(name) = Σ value·weight / Σ weight, max(name) and total(name) = Σ value over all data-parallel ranks."""

    def __init__(self):
        self.sums = collections.defaultdict(float)
        self.weights = collections.defaultdict(float)
        self.maxima = collections.defaultdict(lambda: float("-inf"))
        self.totals = collections.defaultdict(float)

    def add(self, name: str, value: float, weight: float = 1.0) -> None:
        self.sums[name] += value * weight
        self.weights[name] += weight

    def add_many(self, name: str, values) -> None:
        for v in values:
            self.add(name, float(v))

    def max(self, name: str, value: float) -> None:
        self.maxima[name] = max(self.maxima[name], value)

    def total(self, name: str, value: float) -> None:
        self.totals[name] += value

    def reduce(self, group=None) -> dict[str, float]:
        """Collective over `group` (None = no reduction); every rank gets the same dict. The key sets must be the
        same on every rank (add a 0-weight entry when a rank has nothing)."""
        names, max_names = sorted(self.sums), sorted(self.maxima)
        total_names = sorted(self.totals)
        device = collective_device(group) if group is not None else None
        sums = torch.tensor([self.sums[n] for n in names] + [self.weights[n] for n in names] +
                            [self.totals[n] for n in total_names], dtype=torch.float64, device=device)
        maxima = torch.tensor([self.maxima[n] for n in max_names], dtype=torch.float64, device=device)
        if group is not None and dist.get_world_size(group) > 1:
            dist.all_reduce(sums, group=group)
            dist.all_reduce(maxima, dist.ReduceOp.MAX, group=group)
        k = len(names)
        out = {n: (sums[i] / sums[k + i]).item() if sums[k + i] > 0 else 0.0 for i, n in enumerate(names)}
        out.update({n: maxima[i].item() if maxima[i] > float("-inf") else 0.0 for i, n in enumerate(max_names)})
        out.update({n: sums[2 * k + i].item() for i, n in enumerate(total_names)})
        return out
