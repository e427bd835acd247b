"""Sample from tensor-parallel vocab shards without gathering the [B, V] logits: the tokens of `sampler.sample`
on the gathered logits, bit for bit, and the same full-vocabulary logprobs (to fp32 rounding).

Megatron's vocab-parallel output layer (runtime_gather_output=False) gives TP rank r the logits of ids
[r·V_local, (r+1)·V_local) of the padded vocabulary; ids >= vocab_size (the padding) are never sampled or
counted. Per step, every rank:
  1. τ, only when a sampled row truncates (a greedy row never needs it: its argmax is always kept):
     - rows with 0 < top_k < V and top_p = 1: the rank's k_max largest logits ([R, k_max], -inf past its
       columns) are all-gathered, and τ is the k-th largest of their union: exactly the row's k-th largest
       logit (each shard's share of the row's top k lies within its own top k), as values are only selected;
     - rows with top_p < 1 (with top-k or without): their logit rows are all-gathered ([R, V]) and
       sampler.truncation_threshold_B runs on them, i.e. the full-vocabulary computation itself. The top-p
       boundary compares an fp32 softmax cumsum over the sorted row, whose rounding depends on every logit of
       the row; rebuilding it from per-shard sums would round differently and could move the boundary by a
       token, so only these rows pay the gather the model's runtime_gather_output pays today for every row.
  2. its shard's partials (kernels.sampling_partials with τ): fp64 [B, S, 5], all-gathered to [TP, B, S, 5];
  3. kernels.combine_sampling_partials over the TP·S partials of each row: the same token and logprob on
     every rank (the noise of an id is the same on every rank, and the fold is order-independent).
One all-gather of 5·S fp64 per row without truncation; one more for top-k rows, one more for top-p rows.
"""
from __future__ import annotations

from typing import Callable

import torch

from r1_megatron.kernels import combine_sampling_partials, sampling_partials
from r1_megatron.kernels.vocab_parallel import gather_token_state, vocab_shard

from .sampler import SampleOutput, SamplingBatch, truncation_threshold_B

AllGather = Callable[[torch.Tensor], torch.Tensor]  # t [N, ...] -> [TP, N, ...]: every rank's t, in rank order


def sample_vocab_parallel(logits_BVlocal: torch.Tensor, batch: SamplingBatch, vocab_size: int,
                          group) -> SampleOutput:
    """`batch.sample` of the full-vocabulary logits, from this rank's vocab shard.

    logits_BVlocal: [B, V_local] (any float dtype), this rank's columns of Megatron's vocab-parallel logits,
    which hold ids [rank·V_local, (rank+1)·V_local) with rank = the rank in `group`; batch: built with
    SamplingBatch.from_rows, identical on every rank; vocab_size: the true vocabulary size (<= TP·V_local);
    group: the tensor-parallel process group. Every rank of the group must call it, and gets the same result."""
    shard = vocab_shard(group, logits_BVlocal.shape[1])

    def all_gather(t: torch.Tensor) -> torch.Tensor:
        return gather_token_state(t.reshape(t.shape[0], -1), group, shard).view(shard.size, *t.shape)

    return sample_vocab_shard(logits_BVlocal, batch, shard.vocab_start, vocab_size, all_gather)


def sample_vocab_shard(logits_BVlocal: torch.Tensor, batch: SamplingBatch, vocab_start: int, vocab_size: int,
                       all_gather: AllGather) -> SampleOutput:
    """sample_vocab_parallel with the collective passed in: `all_gather` stacks every shard's tensor in vocab
    order (shards are equal-width and contiguous: shard p holds ids [p·V_local, (p+1)·V_local))."""
    B, V_local = logits_BVlocal.shape
    if B == 0:
        return SampleOutput(torch.empty(0, dtype=torch.int64, device=logits_BVlocal.device),
                            torch.empty(0, dtype=torch.float32, device=logits_BVlocal.device))
    vocab_end = min(vocab_start + V_local, vocab_size)
    tau_B = _thresholds(logits_BVlocal, batch, vocab_end - vocab_start, vocab_size, all_gather)
    partials_BS5 = sampling_partials(logits_BVlocal, batch.temperature_B, batch.seeds_B, batch.steps_B, tau_B,
                                     vocab_start, vocab_end)
    partials_B_PS_5 = all_gather(partials_BS5).transpose(0, 1).flatten(1, 2)
    return SampleOutput(*combine_sampling_partials(partials_B_PS_5))


def _truncated_rows(batch: SamplingBatch, vocab_size: int) -> tuple[list[int], list[int]]:
    """(top-k rows, top-p rows) among the sampled rows (module docstring), from the host-side settings."""
    if batch.all_greedy or (batch.top_k_B is None and batch.top_p_B is None):
        return [], []
    if not batch.params:
        raise ValueError("sample_vocab_parallel: a truncating batch must come from SamplingBatch.from_rows (its "
                         "host-side params plan the gathers without a device sync)")
    sampled = [(b, p) for b, p in enumerate(batch.params) if p.temperature > 0]
    top_p_rows = [b for b, p in sampled if p.top_p < 1]
    top_k_rows = [b for b, p in sampled if p.top_p >= 1 and 0 < p.top_k < vocab_size]
    return top_k_rows, top_p_rows


def _thresholds(logits_BVlocal, batch: SamplingBatch, n_valid: int, vocab_size: int,
                all_gather: AllGather) -> torch.Tensor | None:
    """τ_B fp32, -inf on rows that keep every token; None when no sampled row truncates."""
    top_k_rows, top_p_rows = _truncated_rows(batch, vocab_size)
    if not top_k_rows and not top_p_rows:
        return None
    device = logits_BVlocal.device
    tau_B = torch.full((logits_BVlocal.shape[0],), float("-inf"), dtype=torch.float32, device=device)
    if top_k_rows:
        rows_R = torch.tensor(top_k_rows, device=device)
        k_max = max(batch.params[b].top_k for b in top_k_rows)
        tau_B[rows_R] = _top_k_tau(logits_BVlocal[rows_R, :max(n_valid, 0)], batch.top_k_B[rows_R], k_max, all_gather)
    if top_p_rows:
        rows_R = torch.tensor(top_p_rows, device=device)
        full_RV = all_gather(logits_BVlocal[rows_R]).transpose(0, 1).flatten(1)[:, :vocab_size]
        top_k_R = None if batch.top_k_B is None else batch.top_k_B[rows_R]
        tau_B[rows_R] = truncation_threshold_B(full_RV, batch.temperature_B[rows_R], top_k_R,
                                               batch.top_p_B[rows_R]).to(torch.float32)
    return tau_B


def _top_k_tau(local_RV: torch.Tensor, top_k_R: torch.Tensor, k_max: int, all_gather: AllGather) -> torch.Tensor:
    """The top_k-th largest logit of each row over every shard, from each shard's k_max largest: fp32 [R], which
    holds bf16/fp16 logits exactly."""
    top_RK = torch.full((local_RV.shape[0], k_max), float("-inf"), dtype=torch.float32, device=local_RV.device)
    k_local = min(k_max, local_RV.shape[1])
    if k_local:
        top_RK[:, :k_local] = local_RV.topk(k_local, dim=1).values
    union_R_PK = all_gather(top_RK).transpose(0, 1).flatten(1)
    return union_R_PK.topk(k_max, dim=1).values.gather(1, top_k_R[:, None] - 1)[:, 0]
