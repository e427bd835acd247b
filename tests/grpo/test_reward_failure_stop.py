"""A run whose reward fails on every sample stops after rewards.max_failed_steps steps, with the reward's error."""
import dataclasses
import json

import pytest

from r1_megatron.grpo.reward_health import RewardFailure
from r1_megatron.grpo.trainer import GRPOTrainer
from tests.grpo.test_trainer import initial_model, tiny_run  # noqa: F401 (a fixture)


def test_a_run_whose_rewards_all_fail_stops_with_the_error(initial_model, tmp_path):  # noqa: F811
    cfg = tiny_run(tmp_path / "run", initial_model, steps=5)
    cfg.rewards = dataclasses.replace(cfg.rewards, weights={"arithmetic_exact": 1.0, "always_raises": 1.0},
                                      max_failed_steps=2)
    with pytest.raises(RewardFailure) as err:
        GRPOTrainer(cfg).train()
    # 4 prompts x 4 samples = 16 samples a step, each with always_raises failing
    assert str(err.value) == ("rewards failed on every sample of steps 1-2 (16 errors, 0 timeouts, 0 crashes in "
                              "step 2; rewards.max_failed_steps=2); first failure: always_raises: RuntimeError: "
                              "reward bug")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m["reward/samples"], m["reward/errors"], m["reward/timeouts"], m["reward/crashes"])
            for m in lines] == [(1, 16.0, 16.0, 0.0, 0.0), (2, 16.0, 16.0, 0.0, 0.0)]
