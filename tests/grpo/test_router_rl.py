"""MoE routers in GRPO (grpo/router_rl.py): the RL router settings, the router health metrics by hand, and runs
with replay, measure and off."""
import dataclasses
from pathlib import Path

import pytest
import torch

from r1_megatron.grpo.router_rl import RouterHealth, RouterRLConfig, apply_router_settings
from r1_megatron.grpo.trainer import GRPOTrainer
from r1_megatron.models import build_model, preset
from r1_megatron.models.routing_replay import RoutingMode, moe_routers, routing_session
from r1_megatron.parallel import initialize
from r1_megatron.runtime import seed_everything
from tests.grpo.test_trainer import initial_model, metrics, tiny_run  # noqa: F401  (initial_model: a fixture)


@pytest.fixture
def demo_model():
    initialize()
    seed_everything(0)
    return build_model(preset("demo-moe"))


@pytest.mark.parametrize("field, value, match", [
    ("replay", "sometimes", "router.replay"), ("dtype", "bf16", "router.dtype"),
    ("bias_update_rate", -1e-3, "router.bias_update_rate"), ("aux_loss_coeff", "0.1", "router.aux_loss_coeff")])
def test_bad_router_settings_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        RouterRLConfig(**{field: value})


def test_router_settings_reach_the_routers_and_models_built_from_the_policy(demo_model):
    apply_router_settings(demo_model, RouterRLConfig(dtype="fp64", aux_loss_coeff=0.01, bias_update_rate=0.0))
    config, moe = demo_model.config, demo_model.model_config.moe
    assert (config.moe_router_dtype, config.moe_aux_loss_coeff, config.moe_router_bias_update_rate) == ("fp64", 0.01, 0)
    assert (moe.router_dtype, moe.aux_loss_coeff, moe.bias_update_rate) == ("fp64", 0.01, 0.0)
    assert [r.routing_type for r in moe_routers(demo_model)] == ["seq_aux_loss"]
    reference = build_model(demo_model.model_config)  # what grpo/reference.py builds
    assert reference.config.moe_router_dtype == "fp64" and reference.config.moe_router_load_balancing_type == \
        "seq_aux_loss"
    seen = []

    class Spy:  # a routing session that only looks at the scores the router computed
        def route(self, slot, scores, values, experts):
            seen.append(scores.dtype)
            return values, experts

    with routing_session(demo_model, Spy()):
        demo_model(torch.tensor([[1, 2, 3]]), torch.arange(3)[None], None)
    assert seen == [torch.float64]
    apply_router_settings(demo_model, RouterRLConfig())  # the defaults: fp32, no balancing loss, frozen bias
    assert [r.routing_type for r in moe_routers(demo_model)] == ["none"]
    assert demo_model.config.moe_router_dtype == "fp32"


def test_router_health_by_hand(demo_model):
    health = RouterHealth(demo_model, RoutingMode.REPLAY)  # one MoE layer (layer 2) of 4 experts, top-2
    health.begin_step()
    # 3 tokens of one sequence and 1 of another: loads [4, 2, 1, 1] -> mean 2, max 4
    health.add_rollout([torch.tensor([[[0, 1]], [[0, 2]], [[0, 1]]], dtype=torch.uint8),
                        torch.tensor([[[3, 0]]], dtype=torch.uint8), None])
    health._agreement.add(0, torch.tensor([[0, 1], [2, 3]]), torch.tensor([[1, 0], [2, 1]]),
                          torch.tensor([True, True]))  # 2 + 1 of 4 choices agree
    moe_routers(demo_model)[0].expert_bias[1] += 0.25  # what a bias update would do
    out = health.metrics(None)
    assert out["router/imbalance/layer_2"] == 2.0 and out["router/top_expert_tokens/layer_2"] == 4
    assert out["router/agreement"] == 0.75 == out["router/agreement/layer_2"] == out["router/agreement_min"]
    assert out["router/disagreements"] == 1
    assert out["router/bias_drift_max"] == 0.25 and out["router/imbalance_max"] == 2.0


def _run(tmp_path, initial_model, name, **router):  # noqa: F811
    cfg = tiny_run(tmp_path / name, initial_model, steps=2)
    cfg.router = dataclasses.replace(cfg.router, **router)
    GRPOTrainer(cfg).train()
    return metrics(tmp_path / name)


def test_runs_with_replay_measure_and_off(initial_model, tmp_path):  # noqa: F811
    replay, measure, off = (_run(tmp_path, initial_model, mode, replay=mode) for mode in ("replay", "measure", "off"))
    for m in replay + measure:
        assert m["router/agreement"] == 1.0 and m["router/disagreements"] == 0  # fp32: engine and trainer agree
        assert m["router/imbalance_max"] >= 1.0 and m["router/top_expert_tokens/layer_2"] > 0
        assert m["router/bias_drift_max"] == 0.0  # the RL default freezes the expert bias
    assert not any(k.startswith(("router/agreement", "router/imbalance")) for m in off for k in m)
    # recording changes nothing; replaying the experts the training forward chooses anyway changes nothing (step
    # 1); later, the reference (the initial weights) and the second mini-batch (after an update) route some
    # tokens elsewhere than the rollout did, and replay sends them to the rollout's experts instead
    strip = lambda ms: [{k: v for k, v in m.items() if not k.startswith("router/")} for m in ms]  # noqa: E731
    assert strip(measure) == strip(off) and strip(replay)[0] == strip(measure)[0]
    assert strip(replay)[1]["loss/kl"] != strip(measure)[1]["loss/kl"]
    moving = _run(tmp_path, initial_model, "bias", bias_update_rate=0.01)
    drifts = [m["router/bias_drift_max"] for m in moving]  # the net change over the step's 2 optimizer steps,
    assert max(drifts) > 0 and all(d <= 2 * 0.01 + 1e-7 for d in drifts)  # each moving the bias by ±rate


def test_the_docs_commands_load_and_a_bad_mode_names_the_key():
    from r1_megatron.run_config import load_run_config
    from tests.doc_examples import train_command

    text = (Path(__file__).resolve().parents[2] / "docs" / "moe_rl.md").read_text()
    lines = [line.split("#")[0] for line in text.splitlines() if line.startswith("r1-megatron train grpo")]
    configs = [load_run_config(*train_command(line)) for line in lines]
    assert [c.router.replay for c in configs] == [RoutingMode.REPLAY, RoutingMode.MEASURE]
    assert configs[1].model.dtype == "bf16"
    with pytest.raises(ValueError, match="router.replay"):
        load_run_config(None, ["router.replay=sometimes"])
    # YAML reads a bare off / on as false / true
    assert load_run_config(None, ["router.replay=off"]).router.replay is RoutingMode.OFF
    assert load_run_config(None, ["router.replay=on"]).router.replay is RoutingMode.REPLAY
