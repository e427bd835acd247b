"""The loss's numerical guards as GRPO settings (algorithm.*: validation, the recipe path, the loss function) and the
health warnings on the step's clip fraction and train/rollout mismatch (loss_health.py)."""
import math
import random

import pytest
import torch

from r1_megatron.grpo.config import AlgorithmConfig, GRPORunConfig
from r1_megatron.grpo.loss_health import LossHealth
from r1_megatron.grpo.policy_loss import policy_loss_fn
from r1_megatron.grpo.rollout_batch import RolloutSample, micro_batches
from r1_megatron.kernels import reference
from r1_megatron.run_config import ConfigError, load_run_config
from tests.doc_examples import ROOT, doc_examples, train_command


def steps(health: LossHealth, values: list[dict]) -> list[dict]:
    return [health.check(i + 1, m) for i, m in enumerate(values)]


def test_the_clip_fraction_warning_switches_on_above_its_band_and_off_below_it():
    said: list[str] = []
    health = LossHealth(0.2, 0.05, said.append)
    clip = [0.0, 0.1, 0.2, 0.35, 0.5, 0.21, 0.05, 0.3]
    out = steps(health, [{"loss/clip_frac": c, "mismatch/mean": 1e-6} for c in clip])
    assert [o["health/clip_fraction_warning"] for o in out] == [0, 0, 0, 1, 1, 1, 0, 1]  # 0.2 itself is healthy
    assert all(o["health/mismatch_warning"] == 0 for o in out)
    # one line when a warning starts, one when it ends: not one per step
    assert said == [
        "warning: step 4: loss/clip_frac=0.35 is above its healthy band (algorithm.health_clip_fraction_max=0.2): "
        "the policy moved far from the rollout policy within the step: lower optimizer.lr, or fewer "
        "algorithm.mini_batches or algorithm.epochs",
        "step 7: loss/clip_frac=0.05 is back within its healthy band (algorithm.health_clip_fraction_max=0.2) after 3 "
        "step(s) outside it",
        "warning: step 8: loss/clip_frac=0.3 is above its healthy band (algorithm.health_clip_fraction_max=0.2): "
        "the policy moved far from the rollout policy within the step: lower optimizer.lr, or fewer "
        "algorithm.mini_batches or algorithm.epochs",
    ]


def test_the_mismatch_warning_and_a_nan_metric():
    said: list[str] = []
    health = LossHealth(0.2, 0.05, said.append)
    out = steps(health, [{"loss/clip_frac": 0.0, "mismatch/mean": m} for m in (1e-6, 0.08, math.nan, 0.01)])
    assert [o["health/mismatch_warning"] for o in out] == [0, 1, 1, 0]  # NaN is outside every band
    assert len(said) == 2 and said[0].startswith("warning: step 2: mismatch/mean=0.08 is above its healthy band "
                                                 "(algorithm.health_mismatch_max=0.05)")


def test_a_band_set_to_null_neither_warns_nor_logs_a_metric():
    said: list[str] = []
    out = steps(LossHealth(None, 0.05, said.append), [{"loss/clip_frac": 1.0, "mismatch/mean": 0.0}])
    assert out == [{"health/mismatch_warning": 0.0}] and said == []


def test_the_defaults_and_validation_of_the_guards_and_bands():
    a = AlgorithmConfig()
    assert (a.log_ratio_clamp, a.kl_log_ratio_clamp, a.kl_value_clamp) == (20.0, 20.0, 10.0)
    assert (a.health_clip_fraction_max, a.health_mismatch_max) == (0.2, 0.05)
    loss_cfg = AlgorithmConfig(log_ratio_clamp=None, kl_value_clamp=3.0).loss_config(8)
    assert (loss_cfg.log_ratio_clamp, loss_cfg.kl_log_ratio_clamp, loss_cfg.kl_value_clamp) == (None, 20.0, 3.0)
    for kw, needle in [
        (dict(log_ratio_clamp=0.0), "algorithm.log_ratio_clamp=0.0: must be None (off) or a finite number > 0"),
        (dict(kl_log_ratio_clamp=-20.0), "algorithm.kl_log_ratio_clamp=-20.0"),
        (dict(kl_value_clamp=math.inf), "algorithm.kl_value_clamp=inf"),
        (dict(health_clip_fraction_max=1.5), "algorithm.health_clip_fraction_max=1.5: must be null (no warning) or "
                                             "a fraction in [0, 1]"),
        (dict(health_mismatch_max=-0.1), "algorithm.health_mismatch_max=-0.1"),
    ]:
        with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            AlgorithmConfig(**kw)


def test_the_recipe_path_turns_a_guard_off_with_null_and_names_a_bad_value():
    cfg = load_run_config(None, ["algorithm.log_ratio_clamp=null", "algorithm.kl_value_clamp=5"], cls=GRPORunConfig)
    assert cfg.algorithm.log_ratio_clamp is None and cfg.algorithm.kl_value_clamp == 5.0
    with pytest.raises(ConfigError, match=r"^command line: algorithm\.log_ratio_clamp=0\.0: must be None \(off\)"):
        load_run_config(None, ["algorithm.log_ratio_clamp=0"], cls=GRPORunConfig)


def test_the_documented_example_sets_what_it_says_and_prints_what_it_shows():
    cfg = load_run_config(*train_command(doc_examples("r1_reference.md")["loss guards"]), cls=GRPORunConfig)
    a = cfg.algorithm
    assert (a.log_ratio_clamp, a.kl_log_ratio_clamp, a.kl_value_clamp, a.health_clip_fraction_max) == \
        (10.0, 20.0, None, 0.1)
    said: list[str] = []
    health = LossHealth(a.health_clip_fraction_max, a.health_mismatch_max, said.append)
    for step, clip in ((11, 0.05), (12, 0.14), (13, 0.2), (14, 0.12), (15, 0.08)):
        health.check(step, {"loss/clip_frac": clip, "mismatch/mean": 0.0})
    page = " ".join((ROOT / "docs" / "r1_reference.md").read_text().split())
    assert len(said) == 2 and all(f"`{line}`" in page for line in said), said


def test_the_trainers_loss_function_applies_the_configured_clamps():
    """policy_loss_fn hands every GRPOLossConfig field to the kernel: a rollout logprob 30 nats below the policy's
    is clamped to the configured bound, and not at all with the guard off."""
    from r1_megatron.parallel import initialize

    initialize()
    rng = random.Random(0)
    samples = [RolloutSample([5, 6], [rng.randrange(3, 30) for _ in range(4)], [-30.0, -1.0, -2.0, -0.5], 1.0,
                             -1.0, truncated=False, prompt_index=0)]
    (batch,) = micro_batches(samples, 1, 5, pad_id=0, mask_truncated=False)
    logits_BTV = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(0))
    for clamp in (5.0, None):
        loss_cfg = AlgorithmConfig(kl_coef=0.0, log_ratio_clamp=clamp, loss_agg="token-mean").loss_config(4)
        loss, units = policy_loss_fn(loss_cfg, 1.0)(logits_BTV, batch)
        gold, _ = reference.grpo_loss(logits_BTV.double(), batch.labels, batch.extras["old_logprobs"].double(), None,
                                      batch.extras["advantages"].double(), batch.loss_mask, kl_coef=0.0,
                                      log_ratio_clamp=clamp, loss_agg="token-mean", normalizer=1.0)
        assert units == 4 and loss.item() == pytest.approx(gold.item(), rel=1e-5)
        assert (loss.item() < 4 * math.exp(5.0)) == (clamp is not None)  # ρ ≈ e^27 for the first token unclamped
