"""GRPO's training passes on packed rows (algorithm.max_tokens_per_micro_batch) give the loss, gradients and
update of one-sequence-per-row micro-batches, for every loss aggregation (hand-weighted per-token masks and unit
counts, policy_loss.py)."""
import random

import pytest
import torch

from r1_megatron.grpo.policy_loss import policy_loss_fn
from r1_megatron.grpo.rollout_batch import RolloutSample, micro_batches, packed_micro_batches
from r1_megatron.kernels import GRPOLossConfig
from r1_megatron.kernels.options import LossAgg
from r1_megatron.training.optimizer import OptimizerSettings, build_optimizer, build_scheduler
from r1_megatron.training.step import build_ddp, train_step, unwrap

NORM_LENGTH = 12


def rollout(seed: int = 0) -> list[RolloutSample]:
    rng = random.Random(seed)
    samples = []
    for i in range(7):
        prompt = [rng.randrange(3, 120) for _ in range(rng.randrange(2, 7))]
        completion = [rng.randrange(3, 120) for _ in range(rng.randrange(1, 10))]
        samples.append(RolloutSample(prompt, completion, [-rng.random() * 3 for _ in completion], rng.random(),
                                     rng.gauss(0, 1), truncated=i % 3 == 0, prompt_index=i // 2))
    return samples


def model():
    from r1_megatron.models import build_model, preset
    from r1_megatron.parallel import initialize
    from r1_megatron.runtime import seed_everything

    initialize()
    seed_everything(0)
    ddp = build_ddp(build_model(preset("tiny-dense")))
    settings = OptimizerSettings(lr=1e-3, warmup_steps=0, adam_eps=1e-6)
    optimizer = build_optimizer(ddp, settings)
    return ddp, optimizer, build_scheduler(optimizer, settings)


@pytest.mark.parametrize("agg", list(LossAgg))
def test_packed_grpo_step_equals_padded(agg):
    samples = rollout()
    cfg = GRPOLossConfig(0.2, 0.28, None, 0.0, "k3", 1.0, agg.value, NORM_LENGTH, 1.0)
    padded = micro_batches(samples, 3, max(len(s.prompt_ids) + len(s.completion_ids) - 1 for s in samples), pad_id=0,
                           mask_truncated=True)
    packed = packed_micro_batches(samples, 1, 24, pad_id=0, mask_truncated=True, loss_agg=agg,
                                  norm_length=NORM_LENGTH)
    assert len(packed) < len(samples) and all(mb.packed and mb.shape == (1, 24) for mb in packed)
    results, weights = [], []
    for batches in (padded, packed):
        ddp, optimizer, scheduler = model()
        results.append(train_step(ddp, optimizer, scheduler, batches, policy_loss_fn(cfg, 1.0)))
        weights.append({k: v.detach().clone() for k, v in unwrap(ddp).state_dict().items() if torch.is_tensor(v)})
    a, b = results
    assert a.units == b.units and a.units > 0
    assert b.loss == pytest.approx(a.loss, abs=1e-6) and b.grad_norm == pytest.approx(a.grad_norm, rel=1e-5)
    for name in weights[0]:
        assert torch.allclose(weights[0][name], weights[1][name], atol=1e-6), name


def test_packed_units_are_the_aggregations_unit_counts():
    samples = rollout()
    counted = [s for s in samples if not s.truncated]  # mask_truncated: truncated completions get no loss
    expected = {LossAgg.TOKEN_MEAN: sum(len(s.completion_ids) for s in counted),
                LossAgg.SEQ_MEAN_TOKEN_MEAN: len(counted), LossAgg.SEQ_MEAN_TOKEN_SUM: len(samples),
                LossAgg.SEQ_MEAN_TOKEN_SUM_NORM: len(samples) * NORM_LENGTH}
    for agg, units in expected.items():
        packed = packed_micro_batches(samples, 2, 24, pad_id=0, mask_truncated=True, loss_agg=agg,
                                      norm_length=NORM_LENGTH)
        assert sum(float(mb.extras["units"].sum()) for mb in packed) == units, agg
        weight = sum(float(mb.loss_mask.sum()) for mb in packed)
        assert weight == pytest.approx(len(counted) if agg is LossAgg.SEQ_MEAN_TOKEN_MEAN else expected[
            LossAgg.TOKEN_MEAN]), agg


def test_a_rank_without_groups_runs_one_empty_packed_micro_batch():
    (mb,) = packed_micro_batches([], 2, 16, pad_id=0, mask_truncated=False, loss_agg=LossAgg.TOKEN_MEAN,
                                 norm_length=NORM_LENGTH)
    assert mb.packed and mb.shape == (2, 16) and sorted(mb.extras) == ["advantages", "old_logprobs", "units"]
    assert float(mb.loss_mask.sum()) == 0 and float(mb.extras["units"].sum()) == 0
