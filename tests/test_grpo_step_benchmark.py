"""benchmarks/bench_grpo_step.py: our side's worker runs `r1-megatron train grpo` on the benchmark's recipe and
reports exactly-N-token completions with the trainer's timings (always, no TRL needed); the whole smoke comparison
runs when TRL is installed (`pip install -e ".[bench]"`); the same-work check and the summaries can fail."""
import dataclasses
import json

import pytest

from tests.bench_scripts import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_grpo_step")


@pytest.fixture(scope="module")
def smoke(bench):
    return bench.Settings(**bench.SMOKE)


def test_checkpoint_eos_is_outside_the_model_and_prompts_are_one_token_per_char(bench, smoke, tmp_path):
    from r1_megatron.tokenizer import load_tokenizer

    bench.write_checkpoint(tmp_path, bench.SIZES["tiny"], 0)
    config = json.loads((tmp_path / "config.json").read_text())
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.eos_token_id == config["vocab_size"] == bench.EOS_ID  # no model can sample it
    texts = bench.write_prompts(tmp_path / "p.jsonl", smoke)
    assert len(set(texts)) == (smoke.warmup + smoke.steps) * smoke.prompts
    assert all(len(tokenizer.encode(t)) == smoke.prompt_len for t in texts)
    assert tokenizer.decode(tokenizer.encode("a1 b22")) == "a1 b22" and bench.digit_count("a1 b22") == 3.0


def test_recipe_is_a_valid_run_config(bench, smoke, tmp_path):
    import yaml

    from r1_megatron.grpo.config import GRPORunConfig
    from r1_megatron.run_config import load_run_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(bench.ours_recipe(smoke, "hf", "p.jsonl", "run")))
    cfg = load_run_config(recipe, cls=GRPORunConfig)
    assert cfg.algorithm.kl_coef == smoke.beta and cfg.algorithm.clip_eps_low == smoke.epsilon
    assert cfg.rollout.max_new_tokens == smoke.new_tokens and cfg.algorithm.micro_batch_size == 4
    assert cfg.optimizer.adam_beta2 == 0.999 and cfg.optimizer.lr == smoke.lr


def test_ours_worker_generates_exactly_n_tokens_and_reports_its_timings(bench, smoke, tmp_path):
    hf_dir, prompts = tmp_path / "hf", tmp_path / "prompts.jsonl"
    bench.write_checkpoint(hf_dir, bench.SIZES["tiny"], 0)
    bench.write_prompts(prompts, smoke)
    spec = {"settings": dataclasses.asdict(smoke), "hf_dir": str(hf_dir), "prompts": str(prompts),
            "tmp": str(tmp_path), "recipe": bench.ours_recipe(smoke, str(hf_dir), str(prompts), str(tmp_path / "run"))}


    result = bench.run_worker_process("ours", spec, tmp_path, timeout=300)
    assert "error" not in result, result
    assert len(result["per_step"]) == smoke.warmup + smoke.steps
    summary = bench.summarise_ours([result], smoke.warmup)
    assert summary["completion_tokens"] == {"mean": smoke.new_tokens, "max": smoke.new_tokens, "truncated_frac": 1.0}
    assert summary["generate_s"] + summary["reward_s"] + summary["ref_logprobs_s"] + summary["train_s"] <= \
        summary["step_s"] and summary["rest_s"] == pytest.approx(summary["step_s"] - summary["generate_s"])
    assert all(r["reward/total_mean"] >= 0 for r in result["per_step"])
    # CPU time is measured around the same step and generate calls: within the wall times, not zero
    assert 0 < summary["cpu_generate_s"] < summary["cpu_step_s"] <= summary["step_s"] * 1.05


def test_same_work_check_catches_short_completions(bench, smoke):
    n = smoke.new_tokens
    ours = {"completion_tokens": {"mean": n, "max": n, "truncated_frac": 1.0}}
    trl = {"completion_tokens": {"min": n, "max": n}, "prompt_len": [smoke.prompt_len]}
    assert bench.check_same_work(ours, trl, smoke) == []
    short_ours = {"completion_tokens": {"mean": n - 0.5, "max": n, "truncated_frac": 0.9}}
    short_trl = {"completion_tokens": {"min": 1, "max": n}, "prompt_len": [smoke.prompt_len, smoke.prompt_len + 2]}
    problems = bench.check_same_work(short_ours, short_trl, smoke)
    assert len(problems) == 3 and "ours" in problems[0] and "trl" in problems[1] and "prompts" in problems[2]


def test_trl_summary_medians(bench):
    def step(wall, gen):  # CPU time = wall / 2 here, so the two medians can be told apart
        return {"step_s": wall, "generate_s": gen, "cpu_step_s": wall / 2, "cpu_generate_s": gen / 2}

    shapes = [{"new_tokens": 4, "prompt_len": 8}] * 2
    rounds = [{"per_step": [step(9.0, 8.0), step(3.0, 1.0), step(5.0, 2.0)], "generate_shapes": shapes},
              {"per_step": [step(90.0, 1.0), step(4.0, 3.0)], "generate_shapes": shapes}]
    got = bench.summarise_trl(rounds, warmup=1)  # the first step of each round is warmup
    assert (got["step_s"], got["generate_s"], got["rest_s"]) == (4.0, 2.0, 2.0)  # rest: median of 2, 3, 1
    assert (got["cpu_step_s"], got["cpu_generate_s"], got["cpu_rest_s"]) == (2.0, 1.0, 1.0)
    assert got["completion_tokens"] == {"min": 4, "max": 4} and got["prompt_len"] == [8]


def test_smoke_run_against_trl(bench, tmp_path, capsys):
    pytest.importorskip("trl", reason="the peer: pip install -e '.[bench]'")
    out = tmp_path / "grpo_step.json"
    payload = bench.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text()) == payload
    assert "--smoke" in payload["command"] and payload["env"]["trl"] == bench.TRL_VERSION
    tiny = payload["sizes"]["tiny"]
    assert [r["r1_megatron_imported"] for r in tiny["raw"]["trl"]] == [False]
    for side in ("ours", "trl"):
        assert 0 < tiny[side]["generate_s"] < tiny[side]["step_s"]
        assert 0 < tiny[side]["cpu_generate_s"] < tiny[side]["cpu_step_s"]
    for key in bench.PHASES:
        assert tiny["ratios_ours_over_trl"][key] == pytest.approx(tiny["ours"][key] / tiny["trl"][key])
    assert "ours/TRL" in capsys.readouterr().out
