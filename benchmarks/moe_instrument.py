"""Instruments of benchmarks/moe_ep_scaling.py: phase timers on Megatron's token dispatcher methods and a byte
counter on the torch.distributed collectives those dispatchers call (through megatron.core.tensor_parallel.
mappings). Both are installed for a measured step only and removed afterwards (no Megatron code is changed:
the timers are instance attributes of each dispatcher, the counter swaps module attributes inside a `with`).

Bytes are counted as moe_comm_model.py defines them: what this rank sends to other ranks and receives from them.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch
import torch.distributed as dist

# The dispatcher methods MoELayer calls, in order; token_dispatch and token_combine hold the EP communication.
PHASES = ("dispatch_preprocess", "token_dispatch", "dispatch_postprocess", "combine_preprocess", "token_combine",
          "combine_postprocess")
# Where counted bytes are filed: the phase that was running (backward collectives run inside loss.backward()).
BYTE_PHASE = {"dispatch_preprocess": "metadata", "token_dispatch": "dispatch", "dispatch_postprocess": "dispatch",
              "combine_preprocess": "combine", "token_combine": "combine", "combine_postprocess": "combine"}


class StepRecorder:
    """Per measured step: seconds per dispatcher phase, bytes per (phase, direction), the routing counts per
    layer. `phase` is a plain attribute, not thread-local: CUDA autograd runs backward on its own thread."""

    def __init__(self, synchronize):
        self.synchronize = synchronize
        self.phase = None
        self.active = False
        self.seconds = defaultdict(float)
        self.bytes = defaultdict(lambda: [0, 0])  # phase -> [sent, received]
        self.counts_LE = []  # per layer: the (token, expert) pairs of this rank's tokens per expert

    def reset(self) -> None:
        self.seconds.clear()
        self.bytes.clear()
        self.counts_LE = []

    def add_bytes(self, sent: int, received: int) -> None:
        if self.active:
            entry = self.bytes[self.phase or "other"]
            entry[0] += int(sent)
            entry[1] += int(received)


def instrument_dispatcher(dispatcher, recorder: StepRecorder) -> None:
    """Time each phase method of this dispatcher instance and file its collectives under the phase; the routing
    map's per-expert counts are recorded in dispatch_preprocess (the map MoELayer's router produced)."""
    for name in PHASES:
        original = getattr(dispatcher, name)

        def timed(*args, _original=original, _name=name, **kwargs):
            if not recorder.active:
                return _original(*args, **kwargs)
            if _name == "dispatch_preprocess":
                routing_map = kwargs.get("routing_map", args[1] if len(args) > 1 else None)
                recorder.counts_LE.append(routing_map.sum(dim=0).long().cpu().tolist())
            recorder.synchronize()
            start = time.perf_counter()
            recorder.phase = BYTE_PHASE[_name]
            try:
                return _original(*args, **kwargs)
            finally:
                recorder.synchronize()
                recorder.seconds[_name] += time.perf_counter() - start
                recorder.phase = None

        setattr(dispatcher, name, timed)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _split_bytes(t: torch.Tensor, splits, size: int) -> list[int]:
    row = _nbytes(t) // max(1, t.shape[0]) if t.dim() else _nbytes(t)
    if splits is None:
        return [_nbytes(t) // size] * size
    return [int(s) * row for s in splits]


def _group(kwargs):
    group = kwargs.get("group")
    return group if group is not None else dist.group.WORLD


@contextlib.contextmanager
def count_collectives(recorder: StepRecorder):
    """Swap in counting versions of the collectives the dispatchers use; restore them on exit."""
    import megatron.core.tensor_parallel.mappings as mappings

    originals = {"a2a": dist.all_to_all_single, "ag": mappings.dist_all_gather_func,
                 "rs": mappings.dist_reduce_scatter_func, "ag_list": dist.all_gather, "rs_list": dist.reduce_scatter,
                 "ar": dist.all_reduce}

    def all_to_all_single(output, input, output_split_sizes=None, input_split_sizes=None, **kwargs):
        group = _group(kwargs)
        me, size = dist.get_rank(group), dist.get_world_size(group)
        sent = _split_bytes(input, input_split_sizes, size)
        received = _split_bytes(output, output_split_sizes, size)
        recorder.add_bytes(sum(sent) - sent[me], sum(received) - received[me])
        return originals["a2a"](output, input, output_split_sizes, input_split_sizes, **kwargs)

    def all_gather_into_tensor(output, input, **kwargs):
        size = dist.get_world_size(_group(kwargs))
        recorder.add_bytes(_nbytes(input) * (size - 1), _nbytes(output) - _nbytes(input))
        return originals["ag"](output, input, **kwargs)

    def reduce_scatter_tensor(output, input, **kwargs):
        size = dist.get_world_size(_group(kwargs))
        recorder.add_bytes(_nbytes(input) - _nbytes(output), _nbytes(output) * (size - 1))
        return originals["rs"](output, input, **kwargs)

    def all_gather(tensor_list, tensor, **kwargs):
        me = dist.get_rank(_group(kwargs))
        recorder.add_bytes(_nbytes(tensor) * (len(tensor_list) - 1),
                           sum(_nbytes(t) for i, t in enumerate(tensor_list) if i != me))
        return originals["ag_list"](tensor_list, tensor, **kwargs)

    def reduce_scatter(output, input_list, **kwargs):
        me = dist.get_rank(_group(kwargs))
        recorder.add_bytes(sum(_nbytes(t) for i, t in enumerate(input_list) if i != me),
                           _nbytes(output) * (len(input_list) - 1))
        return originals["rs_list"](output, input_list, **kwargs)

    def all_reduce(tensor, *args, **kwargs):  # not on the dispatch path; counted as reduce-scatter + all-gather
        size = dist.get_world_size(_group(kwargs))
        moved = 2 * _nbytes(tensor) * (size - 1) // size
        recorder.add_bytes(moved, moved)
        return originals["ar"](tensor, *args, **kwargs)

    dist.all_to_all_single, dist.all_gather, dist.reduce_scatter, dist.all_reduce = (
        all_to_all_single, all_gather, reduce_scatter, all_reduce)
    mappings.dist_all_gather_func, mappings.dist_reduce_scatter_func = all_gather_into_tensor, reduce_scatter_tensor
    try:
        yield recorder
    finally:
        dist.all_to_all_single, dist.all_gather, dist.reduce_scatter, dist.all_reduce = (
            originals["a2a"], originals["ag_list"], originals["rs_list"], originals["ar"])
        mappings.dist_all_gather_func, mappings.dist_reduce_scatter_func = originals["ag"], originals["rs"]


def peak_memory(device: str) -> dict:
    """Peak memory of this rank: torch.cuda.max_memory_allocated since the point's reset on GPU; on CPU the
    process's peak resident set size so far (ru_maxrss), which includes everything the process ever held."""
    if device == "cuda":
        return {"kind": "cuda_max_memory_allocated", "MiB": torch.cuda.max_memory_allocated() / 2**20}
    import resource

    return {"kind": "cpu_peak_rss_of_process", "MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def alltoall_bandwidth(group, nbytes: int, device: str, repeats: int = 5) -> float | None:
    """Bytes/s one rank sends to the others in an equal-split all_to_all_single over `group` (median of
    `repeats`); None for a group of one."""
    size = dist.get_world_size(group)
    if size == 1:
        return None
    numel = max(size, nbytes // 2 // size * size)
    src = torch.ones(numel, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats + 1):
        dist.barrier(group=group)
        start = time.perf_counter()
        dist.all_to_all_single(dst, src, group=group)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return numel * 2 * (size - 1) / size / times[len(times) // 2]
