"""The shipped pipeline recipes validate as a whole (every stage's section builds as its command's config, every
reference names an earlier stage's output), follow R1's stage order, and use R1's settings where the paper gives
them (docs/r1_reference.md). Nothing here runs a stage."""
from pathlib import Path

import pytest

from r1_megatron.pipeline.plan import Pipeline, stand_ins
from r1_megatron.run_config import ConfigError

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "r1_megatron" / "pipeline" / "recipes" / "toy_pipeline.yaml"
FULL = REPO / "examples" / "r1_pipeline_deepseek-v3_64nodes.yaml"
R1_ORDER = ["r1_zero", "cold_start_data", "cold_start_sft", "reasoning_rl", "rejection_sampling", "sft_from_base",
            "all_scenario_rl"]


def stage_configs(pipeline: Pipeline, scratch: Path) -> dict:
    """Every stage's typed config, empty stand-ins for the earlier stages' outputs (as validation uses)."""
    pipeline.validate()
    paths = {(s.name, o): p for s in pipeline.stages for o, p in stand_ins(s, scratch).items()}
    return {s.name: pipeline.stage_config(s, paths) for s in pipeline.stages if s.spec.command != "toy_data"}


def full_pipeline(tmp_path) -> Pipeline:
    """The 64-node recipe with its reward and judge model directories standing in (they are the user's)."""
    overrides = []
    for stage, names in (("rejection_sampling_judged", ["v3_judge"]),
                         ("all_scenario_rl", ["helpfulness", "harmlessness"])):
        for name in names:
            (tmp_path / name).mkdir()
            overrides.append(f"stages.{stage}.config.rewards.models.{name}.path={tmp_path / name}")
    return Pipeline(FULL, overrides)


def test_the_toy_recipe_validates_in_r1s_order_with_r1s_stage_settings(tmp_path):
    pipeline = Pipeline(TOY)
    cfgs = stage_configs(pipeline, tmp_path)
    names = [s.name for s in pipeline.stages]
    assert [n for n in names if n in R1_ORDER] == R1_ORDER and names[-1] == "distill"
    assert cfgs["reasoning_rl"].algorithm.clip_eps_low == 10.0  # R1 stage-1 RL: eps = 10
    assert "language_consistency" in cfgs["reasoning_rl"].rewards.weights
    assert cfgs["all_scenario_rl"].rollout.temperature == 0.7 and cfgs["all_scenario_rl"].rewards.models
    assert cfgs["sft_from_base"].training.epochs == 2 and cfgs["sft_from_base"].model.path == str(tmp_path / "base" / "model")
    assert cfgs["distill"].model.preset == "tiny-dense"
    assert [s.name for s in pipeline.stages if s.evaluated] == [
        "base", "r1_zero", "cold_start_sft", "reasoning_rl", "sft_from_base", "all_scenario_rl", "distill"]


def test_the_64_node_recipe_validates_with_r1s_settings(tmp_path):
    pipeline = full_pipeline(tmp_path)
    cfgs = stage_configs(pipeline, tmp_path / "outputs")
    names = [s.name for s in pipeline.stages]
    assert [n for n in names if n in R1_ORDER] == R1_ORDER
    students = [n for n in names if n.startswith("distill_")]
    assert len(students) == 6 and names[-6:] == students
    r1_zero, stage1, stage2 = cfgs["r1_zero"], cfgs["reasoning_rl"], cfgs["all_scenario_rl"]
    assert (r1_zero.optimizer.lr, r1_zero.algorithm.kl_coef, r1_zero.rollout.group_size,
            r1_zero.rollout.temperature) == (3e-6, 0.001, 16, 1.0)  # R1-Zero
    assert stage1.algorithm.clip_eps_low == 10.0 and "language_consistency" in stage1.rewards.weights
    assert stage2.rollout.temperature == 0.7 and set(stage2.rewards.models) == {"helpfulness", "harmlessness"}
    assert stage2.rewards.models["helpfulness"].target == "summary"
    assert stage2.rewards.models["harmlessness"].target == "response"
    assert cfgs["sft_from_base"].training.epochs == 2


def test_the_64_node_recipe_without_its_model_directories_fails_before_any_stage_naming_the_key():
    with pytest.raises(ConfigError) as e:
        Pipeline(FULL).validate()
    assert "stages.rejection_sampling_judged.config.rewards.models.v3_judge.path" in str(e.value)
    assert "no such directory" in str(e.value) and "\n" not in str(e.value)
