"""Process runtime: torch.distributed start-up, Megatron parallel state, and seeding.

Works under torchrun (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT in the environment) and as one plain process.
NCCL on CUDA, gloo on CPU; on CPU the megatron-core compatibility layer is applied first.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import random
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from r1_megatron import child_processes, cpu_compat, warning_filters

warning_filters.install()


@dataclass(frozen=True)
class ParallelConfig:
    """Model-parallel sizes; the data-parallel size is derived from the world size.

    tp: tensor parallel, pp: pipeline parallel, ep: expert parallel, etp: expert tensor parallel (None = tp),
    sp: sequence parallel (None = on when tp > 1 and the model has MoE or MLA layers, which need it).
    """

    tp: int = 1
    pp: int = 1
    ep: int = 1
    etp: int | None = None
    sp: bool | None = None

    def __post_init__(self):
        for name in ("tp", "pp", "ep"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ParallelConfig.{name} must be a positive integer, got {value!r}")
        if self.etp is not None and (not isinstance(self.etp, int) or self.etp < 1):
            raise ValueError(f"ParallelConfig.etp must be a positive integer or None, got {self.etp!r}")

    @property
    def expert_tp(self) -> int:
        return self.tp if self.etp is None else self.etp

    def data_parallel_size(self, world_size: int) -> int:
        """DP size for `world_size` ranks; ValueError naming the numbers when the layout does not fit."""
        model_parallel = self.tp * self.pp
        if world_size % model_parallel:
            raise ValueError(f"world size {world_size} is not divisible by tp*pp = {self.tp}*{self.pp} = {model_parallel}")
        expert_parallel = self.ep * self.expert_tp * self.pp
        if world_size % expert_parallel:
            raise ValueError(
                f"world size {world_size} is not divisible by ep*etp*pp = {self.ep}*{self.expert_tp}*{self.pp} "
                f"= {expert_parallel}")
        return world_size // model_parallel

    def sequence_parallel(self, required: bool) -> bool:
        """Whether SP is on. `required`: the model cannot run TP without it (MoE layers; MLA, whose replicated
        down projections need sequence-split inputs to reduce the shared rope key's gradient over TP)."""
        if self.sp is None:
            return self.tp > 1 and required
        if self.sp and self.tp == 1:
            raise ValueError("sequence parallel (sp=True) needs tp > 1, got tp=1")
        if not self.sp and self.tp > 1 and required:
            raise ValueError(f"this model (MoE or MLA layers) with tp={self.tp} needs sequence parallel; "
                             "sp=False is not allowed")
        return self.sp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> None:
    """Start torch.distributed if it is not running: env:// under torchrun, a private TCP store otherwise.

    First the process is set up so that nothing of it outlives a kill (r1_megatron/child_processes.py)."""
    child_processes.install()
    cpu_compat.apply()
    if dist.is_initialized():
        return
    # Megatron's sequence-parallel layers need one CUDA hardware queue so that communication and compute kernels
    # run in issue order (Megatron-LM's and NeMo's launchers set this; it warns otherwise). It takes effect if set
    # before the CUDA context exists; a user's own value is kept.
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    timeout = datetime.timedelta(minutes=int(os.environ.get("R1_DIST_TIMEOUT_MIN", "30")))
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timeout)
    else:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                                timeout=timeout)


_current: ParallelConfig | None = None


def current_parallel_config() -> ParallelConfig | None:
    """The layout Megatron parallel state was initialised with by `initialize_parallel`, or None."""
    return _current


def initialize_parallel(config: ParallelConfig | None = None) -> ParallelConfig:
    """Start distributed (if needed) and Megatron parallel state for `config`; re-initialises on a new layout."""
    from megatron.core import parallel_state

    global _current, _WORLD_GLOO
    config = config or ParallelConfig()
    if not dist.is_initialized():  # a new process group: groups made in an earlier one (a command that ran
        _WORLD_GLOO = None  # in this process and tore its group down) are gone
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
    init_distributed()
    config.data_parallel_size(dist.get_world_size())
    if parallel_state.model_parallel_is_initialized():
        if _current == config:
            return config
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=config.tp,
        pipeline_model_parallel_size=config.pp,
        expert_model_parallel_size=config.ep,
        expert_tensor_parallel_size=config.expert_tp,
    )
    _current = config
    _ensure_rng_tracker_streams()
    return config


def _ensure_rng_tracker_streams() -> None:
    """Give Megatron's RNG tracker its streams (seed 0) unless seed_everything already did: without them a forward
    at TP > 1 fails with "cuda rng state model-parallel-rng is not added". Torch's own RNG state is kept (on CPU
    the tracker seeding goes through torch's default generator)."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    if get_cuda_rng_tracker().get_states():
        return
    cpu_state = torch.get_rng_state()
    model_parallel_cuda_manual_seed(0)
    torch.set_rng_state(cpu_state)


_WORLD_GLOO = None


def world_gloo_group():
    """The whole world as a gloo group, for small collectives on host tensors whatever the main backend is."""
    global _WORLD_GLOO
    if _WORLD_GLOO is None:
        _WORLD_GLOO = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return _WORLD_GLOO


def collective_device(group=None) -> torch.device:
    """Where a tensor must live for a collective over `group`: NCCL reduces only GPU tensors (a CPU tensor fails
    there), gloo host tensors."""
    if dist.is_initialized() and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def world_max(value: int) -> int:
    """The largest `value` over all ranks (collective: every rank calls it); `value` itself in one process."""
    t = torch.tensor([value])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, dist.ReduceOp.MAX, group=world_gloo_group())
    return int(t.item())


def ensure_parallel_state() -> ParallelConfig:
    """The current layout; a single-process layout is initialised when none exists."""
    from megatron.core import parallel_state

    if dist.is_initialized() and parallel_state.model_parallel_is_initialized() and _current is not None:
        return _current
    return initialize_parallel(ParallelConfig())  # also after a command in this process tore its group down


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, torch and Megatron's tensor/expert-parallel RNG tracker streams.

    Megatron derives each TP/EP rank's stream from `seed`, so initialisation and dropout are reproducible and,
    with CPU initialisation, identical across layouts.
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if parallel_state.model_parallel_is_initialized():
        model_parallel_cuda_manual_seed(seed)


def describe(config: ParallelConfig) -> dict:
    """Layout summary for logs: sizes, derived data-parallel size and this rank."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    return {**dataclasses.asdict(config), "dp": config.data_parallel_size(world), "world_size": world,
            "rank": dist.get_rank() if dist.is_initialized() else 0}
