"""The experts one sequence's tokens were routed to while it was generated (routing replay,
models/routing_replay.py): row t holds, for every MoE layer of this rank, the top-k experts of the forward that
computed token t. Rows are rewritten when a preempted sequence is recomputed, so they always belong to the
forward whose keys and values the later tokens attended to."""
from __future__ import annotations

import torch


class RoutingTrace:
    def __init__(self, num_layers: int, topk: int, dtype: torch.dtype, capacity: int = 64):
        self.rows_NLK = torch.zeros(capacity, num_layers, topk, dtype=dtype)
        self.length = 0  # rows written: positions 0 .. length - 1

    def write(self, start: int, rows_NLK: torch.Tensor) -> None:
        """Rows start .. start + n - 1 (a chunk's tokens; start <= length: chunks are computed in order)."""
        if start > self.length:
            raise RuntimeError(f"RoutingTrace.write at {start}: rows {self.length} .. {start - 1} were never written")
        end = start + rows_NLK.shape[0]
        if end > self.rows_NLK.shape[0]:  # grow by doubling: a decode step appends one row
            grown = torch.zeros(max(end, 2 * self.rows_NLK.shape[0]), *self.rows_NLK.shape[1:],
                                dtype=self.rows_NLK.dtype)
            grown[:self.length] = self.rows_NLK[:self.length]
            self.rows_NLK = grown
        self.rows_NLK[start:end] = rows_NLK
        self.length = max(self.length, end)

    def fork(self, length: int) -> RoutingTrace:
        """A copy of the first `length` rows (a sibling forked from its leader's computed prompt)."""
        trace = RoutingTrace(self.rows_NLK.shape[1], self.rows_NLK.shape[2], self.rows_NLK.dtype, max(64, 2 * length))
        trace.write(0, self.rows_NLK[:length])
        return trace

    def tensor(self) -> torch.Tensor:
        """[length, L, k]: the rows written so far (a copy)."""
        return self.rows_NLK[:self.length].clone()
