"""Public entry point for parallel layouts: `initialize(tp, pp, ep, etp, sp)`.

Data parallelism is whatever remains of the world size. After this, r1_megatron.models.load_hf builds and loads
only this rank's shards, and every other component reads the layout from Megatron's parallel_state.
"""
from __future__ import annotations

from r1_megatron.runtime import ParallelConfig, describe, initialize_parallel


def initialize(tp: int = 1, pp: int = 1, ep: int = 1, etp: int | None = None, sp: bool | None = None) -> ParallelConfig:
    """Start torch.distributed (torchrun or a single process) and Megatron parallel state for this layout."""
    return initialize_parallel(ParallelConfig(tp=tp, pp=pp, ep=ep, etp=etp, sp=sp))


__all__ = ["ParallelConfig", "describe", "initialize"]
