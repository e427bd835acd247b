"""A step's rollout as training tensors: each completion with its prompt, reward, advantage and logprobs, cut into
mini-batches (one optimizer step each) of micro-batches (one forward/backward each).

Sequence i is x = prompt_i + completion_i; its micro-batch row holds input x[:-1] and labels x[1:], right-padded;
loss_mask is 1 exactly at the positions whose label is a completion token, so prompts and padding are never
trained on. Every micro-batch of a step is padded to the same [B, T] (Megatron's pipeline schedule needs one shape).
With algorithm.max_tokens_per_micro_batch the sequences are packed instead, several per row (packed_micro_batches).
"""
from __future__ import annotations

import dataclasses
import itertools

import torch

from r1_megatron.kernels.options import LossAgg
from r1_megatron.training.micro_batch import MicroBatch
from r1_megatron.training.packing import TrainSequence, empty_batch, flat_tensor, pack_batches


@dataclasses.dataclass
class RolloutSample:
    prompt_ids: list[int]
    completion_ids: list[int]
    rollout_logprobs: list[float]  # the engine's log_softmax(logits / T)[token] of each completion token
    reward: float
    advantage: float
    truncated: bool  # finished by length, not by EOS
    prompt_index: int  # the prompt's index within the step's global batch (over data-parallel ranks)
    # the experts each input token (prompt + completion[:-1]) was routed to while generating [P + C - 1, L, k]
    # (models/routing_replay.py), None when not recorded
    routing: torch.Tensor | None = None


def mini_batch_parts(samples: list[RolloutSample], parts: int) -> list[list[RolloutSample]]:
    """Mini-batch i holds the groups of the prompts with global index ≡ i (mod parts): the same sequences whatever
    the data-parallel size (contiguous slices of each rank's share would mix different prompts at DP2 than at DP1)."""
    return [[s for s in samples if s.prompt_index % parts == i] for i in range(parts)]


def split_parts(samples: list, parts: int) -> list[list]:
    """`parts` contiguous slices whose sizes differ by at most one (equal when `parts` divides the length)."""
    size, extra = divmod(len(samples), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [samples[bounds[i]:bounds[i + 1]] for i in range(parts)]


def micro_batches(samples: list[RolloutSample], micro_batch_size: int, seq_len: int, *, pad_id: int,
                  mask_truncated: bool) -> list[MicroBatch]:
    """[B, T = seq_len] micro-batches: input_ids, labels, loss_mask, and extras old_logprobs [B, T] (the rollout's,
    at the label positions), advantages [B] and valid [B] (1 for a real row). A short last micro-batch is padded
    with empty rows (mask 0, valid 0). All of them are built at once, as views of one [B_total, T] per field."""
    rows = list(samples) + [None] * (-len(samples) % micro_batch_size)
    return _micro_batch(rows, seq_len, pad_id, mask_truncated).split_rows(micro_batch_size)


def _micro_batch(rows: list[RolloutSample | None], seq_len: int, pad_id: int, mask_truncated: bool) -> MicroBatch:
    """Row b: x_b = prompt + completion in ids [B, seq_len + 1] (input [:, :-1], labels [:, 1:]); the completion's
    labels sit at first_b = len(prompt) - 1 ... first_b + n_b - 1, where loss_mask (1, or 0 for a truncated one
    under mask_truncated) and old_logprobs go. Each field is flattened over the rows once and written by one
    masked_scatter_, which fills the mask's positions in row-major order: the order of the flat lists."""
    real = [s for s in rows if s is not None]
    _check_fits(real, seq_len)
    prompt_B = torch.tensor([len(s.prompt_ids) if s is not None else 0 for s in rows], dtype=torch.long)
    n_B = torch.tensor([len(s.completion_ids) if s is not None else 0 for s in rows], dtype=torch.long)
    counted_B = torch.tensor([0.0 if (s is None or mask_truncated and s.truncated) else 1.0 for s in rows])
    ids_BT = torch.full((len(rows), seq_len + 1), pad_id, dtype=torch.int64)
    ids_BT.masked_scatter_(torch.arange(seq_len + 1) < (prompt_B + n_B)[:, None], flat_tensor(
        itertools.chain.from_iterable((s.prompt_ids, s.completion_ids) for s in real), int((prompt_B + n_B).sum()),
        torch.long))
    t_T, first_B = torch.arange(seq_len), prompt_B - 1
    completion_BT = (t_T >= first_B[:, None]) & (t_T < (first_B + n_B)[:, None])
    old_BT = torch.zeros(len(rows), seq_len)
    old_BT.masked_scatter_(completion_BT, flat_tensor((s.rollout_logprobs for s in real), int(n_B.sum()),
                                                      torch.float32))
    adv_B = torch.tensor([s.advantage if s is not None else 0.0 for s in rows])
    valid_B = torch.tensor([float(s is not None) for s in rows])
    extras = {"old_logprobs": old_BT, "advantages": adv_B, "valid": valid_B}
    if real and real[0].routing is not None:
        extras["routing"] = _routing(real, t_T < (prompt_B + n_B - 1)[:, None])
    return MicroBatch(ids_BT[:, :-1], ids_BT[:, 1:], completion_BT * counted_B[:, None], extras=extras)


def _routing(samples: list[RolloutSample], fed_BT: torch.Tensor) -> torch.Tensor:
    """extras["routing"] [B, T, L, k] int16: each sample's recorded experts at the positions whose input token the
    engine fed (prompt + completion[:-1]), -1 elsewhere; rows in order, as boolean indexing fills them."""
    _, L, k = samples[0].routing.shape
    routing_BTLK = torch.full((*fed_BT.shape, L, k), -1, dtype=torch.int16)
    routing_BTLK[fed_BT] = torch.cat([s.routing for s in samples]).to(torch.int16)
    return routing_BTLK


def _check_fits(samples: list[RolloutSample], seq_len: int) -> None:
    for s in samples:
        if len(s.prompt_ids) + len(s.completion_ids) > seq_len + 1:
            raise ValueError(f"a rollout sample of {len(s.prompt_ids)} prompt + {len(s.completion_ids)} completion "
                             f"tokens does not fit seq_len={seq_len} (+ 1)")
        if len(s.rollout_logprobs) != len(s.completion_ids):
            raise ValueError(f"a rollout sample has {len(s.rollout_logprobs)} logprobs for "
                             f"{len(s.completion_ids)} completion tokens")
        fed = len(s.prompt_ids) + len(s.completion_ids) - 1
        if s.routing is not None and s.routing.shape[0] != fed:
            raise ValueError(f"a rollout sample has recorded routing for {s.routing.shape[0]} tokens, its "
                             f"{len(s.prompt_ids)} prompt + {len(s.completion_ids)} completion tokens fed {fed}")
        if (s.routing is None) != (samples[0].routing is None):
            raise ValueError("rollout samples mix recorded and unrecorded routing")


def empty_micro_batch(batch: int, seq_len: int) -> MicroBatch:
    """A micro-batch with no loss tokens (zero gradient): keeps ranks' forward counts equal (MoE all-to-all)."""
    return _micro_batch([None] * batch, seq_len, pad_id=0, mask_truncated=False)


def packed_micro_batches(samples: list[RolloutSample], rows: int, max_tokens: int, *, pad_id: int,
                         mask_truncated: bool, loss_agg: LossAgg, norm_length: int) -> list[MicroBatch]:
    """Several sequences per row of `max_tokens` positions (training/packing.py), `rows` rows per micro-batch.
    Per label position: loss_mask the weight of the token in its aggregation (policy_loss.py), extras
    old_logprobs, advantages and units (Σ units = the micro-batch's unit count)."""
    if not samples:  # a rank with no groups this step (dynamic sampling)
        return [empty_batch(rows, max_tokens, pad_id, ("advantages", "old_logprobs", "units"), packed=True)]
    seqs = [_train_sequence(s, mask_truncated, loss_agg, norm_length) for s in samples]
    return pack_batches(seqs, max_tokens, pad_id, rows=rows)


def _train_sequence(s: RolloutSample, mask_truncated: bool, agg: LossAgg, norm_length: int) -> TrainSequence:
    first, n = len(s.prompt_ids) - 1, len(s.completion_ids)  # label position of the first completion token
    counted = 0.0 if (mask_truncated and s.truncated) else 1.0
    weight = counted / max(n, 1) if agg is LossAgg.SEQ_MEAN_TOKEN_MEAN else counted
    unit = {LossAgg.TOKEN_MEAN: 0.0, LossAgg.SEQ_MEAN_TOKEN_MEAN: counted, LossAgg.SEQ_MEAN_TOKEN_SUM: 1.0,
            LossAgg.SEQ_MEAN_TOKEN_SUM_NORM: float(norm_length)}[agg]
    units = [0.0] * first + ([counted] * n if agg is LossAgg.TOKEN_MEAN else [unit] + [0.0] * (n - 1))
    extras = {"old_logprobs": [0.0] * first + list(s.rollout_logprobs), "advantages": [s.advantage] * (first + n),
              "units": units}
    if s.routing is not None:
        extras["routing"] = s.routing
    return TrainSequence(s.prompt_ids + s.completion_ids, [0.0] * first + [weight] * n, extras)
