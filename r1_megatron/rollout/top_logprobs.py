"""The k most likely tokens of a row and their logprobs, for OpenAI's `top_logprobs` (SamplingParams.logprobs).

For row r with temperature T_r (taken as 1 when greedy, as for the sampled token's logprob, rollout/sampler.py):
    lp_rv = log_softmax(logits_r / T_r)_v over the real vocabulary v < vocab_size (Megatron's padded columns are
    never tokens);  top_r = the k largest lp_rv, most likely first, ties to the lower id.
With tensor parallelism the vocab shards are not gathered: each rank takes its shard's k largest logits and its
shard's log-sum-exp; the shards' candidates ([R, k] per rank) and log-sum-exps are all-gathered and merged, so
every rank ends with the same pairs (the k largest of the union are the k largest of the row).
"""
from __future__ import annotations

import torch

from r1_megatron.kernels.vocab_parallel import gather_token_state, vocab_shard


def top_logprobs(logits_RV: torch.Tensor, temperature_R: torch.Tensor, k: int, vocab_size: int,
                 group=None) -> list[list[tuple[int, float]]]:
    """Per row, the k (id, logprob) pairs above. logits_RV: [R, V_local], this rank's columns
    [rank·V_local, (rank+1)·V_local) of the padded vocabulary when `group` (the TP group) is given, else the
    whole row (padded columns past vocab_size allowed); temperature_R: fp32 [R] (0 = greedy)."""
    V_local = logits_RV.shape[1]
    shard = vocab_shard(group, V_local) if group is not None else None
    offset = shard.vocab_start if shard is not None else 0
    scale_R1 = torch.where(temperature_R > 0, temperature_R, 1.0).to(torch.float32)[:, None]
    scaled_RV = logits_RV.float() / scale_R1
    ids_V = torch.arange(offset, offset + V_local, device=logits_RV.device)
    scaled_RV = scaled_RV.masked_fill(ids_V[None] >= vocab_size, float("-inf"))
    lse_R = torch.logsumexp(scaled_RV, dim=1)
    values_RK, index_RK = scaled_RV.topk(min(k, V_local), dim=1)
    ids_RK = index_RK + offset
    if shard is not None:
        def all_gather(t_RX):  # [TP, R, X]: every rank's t, in rank order
            return gather_token_state(t_RX.contiguous(), group, shard).view(shard.size, *t_RX.shape)

        lse_R = torch.logsumexp(all_gather(lse_R[:, None])[..., 0], dim=0)
        values_RK = torch.cat(list(all_gather(values_RK)), dim=1)
        ids_RK = torch.cat(list(all_gather(ids_RK)), dim=1)
    return _best(values_RK - lse_R[:, None], ids_RK, k, vocab_size)


def _best(logprobs_RC: torch.Tensor, ids_RC: torch.Tensor, k: int, vocab_size: int) -> list[list[tuple[int, float]]]:
    """The k best candidates per row, most likely first, ties to the lower id (padding ids dropped)."""
    by_id_RC = ids_RC.argsort(dim=1, stable=True)
    logprobs_RC, ids_RC = logprobs_RC.gather(1, by_id_RC), ids_RC.gather(1, by_id_RC)
    order_RC = logprobs_RC.argsort(dim=1, descending=True, stable=True)
    logprobs_RC, ids_RC = logprobs_RC.gather(1, order_RC).tolist(), ids_RC.gather(1, order_RC).tolist()
    return [[(i, lp) for i, lp in zip(ids, lps) if i < vocab_size][:k] for ids, lps in zip(ids_RC, logprobs_RC)]

