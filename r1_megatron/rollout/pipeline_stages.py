"""Pipeline-parallel generation: each engine step as micro-batches flowing through the pipeline stages.

Every rank of a pipeline group runs the same scheduler on the same requests (the engine checks the requests;
the sampled tokens come from the last stage), so every stage holds the same sequences and block tables, and
each stage's KV cache holds its own layers only (the cache allocates a layer at its first write, keyed by
Megatron's global layer number).

A step's chunks are cut into micro-batches of about equal token counts (`split_micro_batches`). Stage 0 embeds
and runs its layers on micro-batch 0, sends the hidden states [N_0, H] to stage 1 without waiting and goes on
with micro-batch 1 while stage 1 works on micro-batch 0, and so on down the pipeline. The last stage keeps the
logits of every micro-batch, samples the step's tokens and broadcasts tokens and logprobs to the other stages,
whose schedulers append the same values. Cutting a step changes no result: a sequence has one chunk per step,
a chunk reads only keys of earlier steps and of itself, and the copy-on-write block copies precede the first
micro-batch; sampling noise depends on (seed, step, token id) only (rollout/sampler.py).

Lockstep: the step's micro-batch count is all-reduced (MAX) over the pipeline group, and over the expert-parallel
group when there is one; a rank with fewer micro-batches (or no work left) runs one-token idle forwards for the
rest, so every expert-parallel rank of a stage enters each MoE all-to-all, and the loop ends on every rank at
the same step.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from .model_runner import ModelRunner
from .scheduler import Chunk, Scheduler, StepPlan
from .sequence import Sequence


def split_micro_batches(chunks: list[Chunk], count: int) -> list[list[Chunk]]:
    """Contiguous parts of `chunks` (plan order kept), at most `count`: with t_i the token count of chunk i and
    T = Σ t_i, part j ends at the first chunk where the running token sum reaches (j + 1)·T / count. A chunk is
    never cut, so a long prefill chunk makes fewer, uneven parts."""
    parts: list[list[Chunk]] = []
    current: list[Chunk] = []
    total, done = sum(c.end - c.start for c in chunks), 0
    for chunk in chunks:
        current.append(chunk)
        done += chunk.end - chunk.start
        if done * count >= (len(parts) + 1) * total:
            parts.append(current)
            current = []
    return parts


class PipelineStages:
    """This rank's stage of the pipeline group: runs the engine's loop with stage-to-stage sends."""

    def __init__(self, model, device: torch.device, num_micro_batches: int):
        self.model, self.device, self.num_micro_batches = model, device, num_micro_batches
        self.group = parallel_state.get_pipeline_model_parallel_group()
        self.first, self.last = parallel_state.is_pipeline_first_stage(), parallel_state.is_pipeline_last_stage()
        self.prev_rank = parallel_state.get_pipeline_model_parallel_prev_rank()
        self.next_rank = parallel_state.get_pipeline_model_parallel_next_rank()
        self.last_rank = parallel_state.get_pipeline_model_parallel_last_rank()
        config = model.config
        self.hidden_size = config.hidden_size
        self.dtype = config.pipeline_dtype or config.params_dtype  # what Megatron's own p2p sends
        self.lockstep_groups = [self.group]
        if parallel_state.get_expert_model_parallel_world_size() > 1:
            self.lockstep_groups.append(parallel_state.get_expert_model_parallel_group())

    def step(self, scheduler: Scheduler, runner: ModelRunner, record=lambda plan: None) -> bool:
        """One engine step on every stage; False (and nothing run) when no rank of the pipeline (or
        expert-parallel) group has work. record(plan) sees the step's plan."""
        plan = scheduler.schedule() if scheduler.has_work else None
        parts = split_micro_batches(plan.chunks, self.num_micro_batches) if plan is not None else []
        count = self._agreed_count(len(parts))
        if count == 0:
            return False
        if plan is not None:
            record(plan)
        logits_RV = self._forward(runner, plan, parts, count)
        if plan is not None:
            self._sample(runner, logits_RV, scheduler.computed(plan))
            scheduler.release_finished()
        return True

    def release(self) -> None:
        """Drop the last received hidden states (at the end of generation)."""
        self.model.set_input_tensor(None)

    # ------------------------------------------------------------------------------------------- helpers

    def _agreed_count(self, count: int) -> int:
        count_1 = torch.tensor([count], dtype=torch.int64, device=self.device)  # NCCL needs device tensors
        for group in self.lockstep_groups:
            dist.all_reduce(count_1, dist.ReduceOp.MAX, group=group)
        return int(count_1.item())

    def _forward(self, runner: ModelRunner, plan: StepPlan | None, parts: list[list[Chunk]],
                 count: int) -> torch.Tensor | None:
        """Run the step's micro-batches (then idle forwards up to `count`); the last stage returns the logits
        [R, V] of the step's sampling chunks in plan order, the other stages None."""
        # every receive posted up front: the previous stage's sends complete as soon as they are made
        received = [] if self.first else [self._irecv(sum(c.end - c.start for c in part)) for part in parts]
        sends, logits = [], []
        for j in range(count):
            if j >= len(parts):
                self._idle_forward(runner)
                continue
            if not self.first:
                work, hidden_NH = received[j]
                work.wait()
                self.model.set_input_tensor(hidden_NH[:, None])
            # the copy-on-write copies go with the first micro-batch, before any of the step's forwards
            out = runner.forward(StepPlan(parts[j], plan.copies if j == 0 else []))
            if self.last:
                logits.append(out)
            else:  # out: this stage's hidden states [N_j, H]; kept alive until the send completes
                out = out.to(self.dtype).contiguous()
                sends.append((dist.isend(out, self.next_rank, group=self.group), out))
        for work, _ in sends:
            work.wait()
        return torch.cat(logits) if logits else None

    def _irecv(self, num_tokens: int):
        hidden_NH = torch.empty(num_tokens, self.hidden_size, dtype=self.dtype, device=self.device)
        return dist.irecv(hidden_NH, self.prev_rank, group=self.group), hidden_NH

    def _idle_forward(self, runner: ModelRunner) -> None:
        if not self.first:
            self.model.set_input_tensor(torch.zeros(1, 1, self.hidden_size, dtype=self.dtype, device=self.device))
        runner.idle_forward()

    def _sample(self, runner: ModelRunner, logits_RV: torch.Tensor | None,
                sampling: list[tuple[Sequence, int]]) -> None:
        """The last stage samples; its tokens and logprobs (float64: exact for int64 ids < 2^53 and for fp32
        logprobs), and the top logprobs rows asked for, are broadcast, and the other stages append the same."""
        if not sampling:
            return
        k = max(seq.params.logprobs for seq, _ in sampling)
        if self.last:
            runner.sample(logits_RV, sampling)
            values_SC = torch.tensor([_sampled_values(seq, k) for seq, _ in sampling], dtype=torch.float64,
                                     device=self.device)
        else:
            values_SC = torch.empty(len(sampling), 2 + 2 * k, dtype=torch.float64, device=self.device)
        dist.broadcast(values_SC, src=self.last_rank, group=self.group)
        if not self.last:
            for (seq, _), row in zip(sampling, values_SC.tolist()):
                top = [(int(i), lp) for i, lp in zip(row[2::2], row[3::2])][:seq.params.logprobs]
                seq.append(int(row[0]), row[1], runner.max_seq_len, top)


def _sampled_values(seq: Sequence, k: int) -> list[float]:
    """[token, logprob, id_1, logprob_1, ..., id_k, logprob_k] of seq's last token (padded to k pairs)."""
    pairs = [v for pair in seq.top_logprobs[-1] for v in pair]
    return [seq.token_ids[-1], seq.logprobs[-1], *pairs, *[0.0] * (2 * k - len(pairs))]
