"""CUDA-graph decode: the decode forward captured once per bucketed batch size, replayed with static buffers.

A decode step of B rows launches hundreds of small kernels whose launch cost, not the GPU, bounds small-batch
decoding. Captured in a CUDA graph, the whole forward is one launch. What a capture needs, and this file keeps:
every input lives in a static buffer (token ids, positions, cache slots, block table, lengths: tensors, never
Python ints), shapes are fixed (the batch is padded to the next bucket; padding rows write into and read from
the scratch block 0 with length 1), the block table has its full width (the decode kernel's split count depends
only on it), and nothing in the forward syncs with the host.

Graphs are captured lazily, the first time a bucket is needed after the cache exists (its pools are allocated at
the first eager forward), and all of them share one memory pool. A batch larger than every bucket, a step
with prefill chunks, the CPU, or a capture that fails (a module that syncs with the host, such as MoE
token counting) runs eagerly; the reason is logged once. `torch.compile` of the static decode forward is a
separate opt-in (GraphConfig.compile).

`StaticDecode` is the same static-buffer path without the capture (used by `GraphConfig(capture=False)`), so
the padding and buffer logic is tested on CPU exactly as the graphs replay it.
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from r1_megatron.models.kv_cache import ForwardContext, KVCache, forward_context

from .block_manager import SCRATCH_BLOCK

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GraphConfig:
    """enabled: capture decode steps in CUDA graphs on GPU (eager on CPU, always). batch_sizes: the buckets; a
    decode batch runs in the smallest bucket that holds it. capture: False runs the bucketed static-buffer
    forward eagerly (a debugging aid, and how CPU tests check the padding). compile: torch.compile the static
    decode forward (off by default: compile time, and Megatron's modules graph-break often; no effect on CPU,
    where r1_megatron.cpu_compat turns TorchDynamo off)."""

    enabled: bool = True
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
    capture: bool = True
    compile: bool = False

    def __post_init__(self):
        sizes = tuple(self.batch_sizes)
        if not sizes or any(not isinstance(b, int) or b < 1 for b in sizes) or sorted(set(sizes)) != list(sizes):
            raise ValueError(f"graphs.batch_sizes must be increasing ints >= 1, got {self.batch_sizes!r}")


class StaticDecode:
    """Decode forwards over static, bucket-padded input buffers (rows beyond B are padding)."""

    def __init__(self, model, cache: KVCache, max_rows: int, max_blocks: int, max_positions: int,
                 config: GraphConfig, device: torch.device):
        self.model, self.cache, self.config, self.max_positions = model, cache, config, max_positions
        self.buckets = [b for b in config.batch_sizes if b <= max_rows] or [max_rows]
        rows = self.buckets[-1]
        self.host_5R = torch.zeros(5, rows, dtype=torch.int64)  # ids, positions, slots, rows, lengths
        self.ids_R = torch.zeros(rows, dtype=torch.int64, device=device)
        self.positions_R = torch.zeros(rows, dtype=torch.int64, device=device)
        self.slots_R = torch.zeros(rows, dtype=torch.int64, device=device)
        self.seq_lens_R = torch.ones(rows, dtype=torch.int32, device=device)
        self.block_table_RM = torch.full((rows, max_blocks), SCRATCH_BLOCK, dtype=torch.int32, device=device)
        self.logit_index_R = torch.arange(rows, device=device)
        self.steps = 0  # decode steps run on this path
        # a padding row: token 0 at position 0, writing to and attending over the scratch block's first slot
        self._padding_51 = torch.tensor([0, 0, SCRATCH_BLOCK * cache.block_size, 0, 1])[:, None]
        self._run_model = torch.compile(self._model_forward, dynamic=False) if config.compile else self._model_forward

    def bucket(self, batch: int) -> int | None:
        return next((b for b in self.buckets if b >= batch), None)

    def run(self, host_5D: torch.Tensor, block_table_RM: torch.Tensor) -> torch.Tensor:
        """Logits [D, V] of D decode rows: host_5D = (ids, positions, slots, block-table rows, lengths)."""
        D = host_5D.shape[1]
        bucket = self.bucket(D)
        self._load(host_5D, block_table_RM, bucket)
        self.steps += 1
        return self._forward(bucket)[:D]

    def _load(self, host_5D: torch.Tensor, block_table_RM: torch.Tensor, bucket: int) -> None:
        D = host_5D.shape[1]
        self.host_5R[:, :D] = host_5D
        self.host_5R[:, D:bucket] = self._padding_51
        host = self.host_5R[:, :bucket].to(self.ids_R.device, non_blocking=True)
        self.ids_R[:bucket], self.positions_R[:bucket], self.slots_R[:bucket] = host[0], host[1], host[2]
        self.seq_lens_R[:bucket] = host[4]
        torch.index_select(block_table_RM, 0, host[3, :D], out=self.block_table_RM[:D])
        self.block_table_RM[D:bucket] = SCRATCH_BLOCK

    def _forward(self, bucket: int) -> torch.Tensor:
        ctx = ForwardContext(self.cache, self.positions_R[:bucket], self.slots_R[:bucket],
                             self.logit_index_R[:bucket], self.max_positions, num_decode=bucket,
                             block_table_DM=self.block_table_RM[:bucket], seq_lens_D=self.seq_lens_R[:bucket])
        with forward_context(ctx), torch.inference_mode():
            return self._run_model(self.ids_R[:bucket][None], ctx.positions_N[None])

    def _model_forward(self, ids_1B: torch.Tensor, positions_1B: torch.Tensor) -> torch.Tensor:
        return self.model(ids_1B, positions_1B, None, runtime_gather_output=False)[:, 0]  # vocab shards


class DecodeGraphs(StaticDecode):
    """StaticDecode whose forward per bucket is a captured CUDA graph, replayed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None
        self.failed: str | None = None

    def bucket(self, batch: int) -> int | None:
        return None if self.failed else super().bucket(batch)

    def _forward(self, bucket: int) -> torch.Tensor:
        if bucket not in self.graphs:
            try:
                self.graphs[bucket] = self._capture(bucket)
            except Exception as error:  # a host sync or an uncapturable op in the forward: stay eager
                self.failed = f"{type(error).__name__}: {error}"
                log.warning("CUDA-graph decode off (capture of batch %d failed: %s); decoding eagerly", bucket,
                            self.failed)
                return super()._forward(bucket)
        graph, logits_BV = self.graphs[bucket]
        graph.replay()
        return logits_BV

    def _capture(self, bucket: int):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up outside the graph: lazy inits, autotuning, cached rotary tables
                super()._forward(bucket)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits_BV = super()._forward(bucket)
        self.pool = graph.pool()
        return graph, logits_BV


def static_decode(model, cache: KVCache, max_rows: int, max_blocks: int, max_positions: int,
                  config: GraphConfig, device: torch.device) -> StaticDecode | None:
    """The decode path `config` asks for on this device: graphs on CUDA, the uncaptured static path when
    capture is off, None (plain eager decode) otherwise."""
    if not config.enabled:
        return None
    if not config.capture:
        return StaticDecode(model, cache, max_rows, max_blocks, max_positions, config, device)
    if device.type != "cuda":
        return None
    return DecodeGraphs(model, cache, max_rows, max_blocks, max_positions, config, device)
