"""GRPO trainer end to end on CPU: a few steps of a tiny run (one test through the Triton interpreter, the rest
with the PyTorch reference kernels)."""
import json

import pytest

import shutil

from r1_megatron.grpo import trainer as trainer_module
from r1_megatron.grpo.config import (AlgorithmConfig, CheckpointConfig, DataConfig, GRPORunConfig, LoggingConfig,
                                     ModelSourceConfig, RewardsConfig, RolloutConfig, WarmStartConfig)
from r1_megatron.grpo.trainer import GRPOTrainer
from r1_megatron.training.optimizer import OptimizerSettings

TIMING_KEYS = ("time/", "throughput/", "reward/wall_s")


def tiny_run(run_dir, initial_model, steps=3, **algorithm) -> GRPORunConfig:
    return GRPORunConfig(
        run_dir=str(run_dir), steps=steps, seed=0, model=ModelSourceConfig(path=str(initial_model), dtype="fp32"),
        data=DataConfig(synthetic="arithmetic", template="raw", num_synthetic=200),
        rollout=RolloutConfig(prompts_per_step=4, group_size=4, max_new_tokens=4, max_batch_size=16),
        algorithm=AlgorithmConfig(**{"kl_coef": 0.01, "micro_batch_size": 4, "mini_batches": 2, **algorithm}),
        optimizer=OptimizerSettings(lr=1e-3, warmup_steps=0),
        # a reward that random completions sometimes earn, so advantages are non-zero and the policy moves
        rewards=RewardsConfig(weights={"arithmetic_exact": 1.0, "starts_with_one": 1.0}, accuracy="arithmetic_exact",
                              format=None, num_workers=1, plugin_modules=["tests.grpo.reward_plugin"]),
        checkpoint=CheckpointConfig(every_steps=2), logging=LoggingConfig(tensorboard=False, progress=False))


def samples(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]


def metrics(run_dir) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if not k.startswith(TIMING_KEYS)} for m in lines]


@pytest.fixture(scope="module")
def initial_model(tmp_path_factory):
    """The demo MoE's random init as an HF checkpoint: random init differs between layouts (each expert-parallel
    rank draws its experts from its own RNG stream), a loaded checkpoint does not."""
    from r1_megatron.models import build_model, preset, save_hf
    from r1_megatron.parallel import initialize
    from r1_megatron.runtime import seed_everything

    initialize()
    seed_everything(0)
    return save_hf(build_model(preset("demo-moe")), tmp_path_factory.mktemp("init") / "hf")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, initial_model):
    """The 3-step run the other tests compare with (PyTorch reference kernels, as every test but one)."""
    run_dir = tmp_path_factory.mktemp("grpo") / "run"
    GRPOTrainer(tiny_run(run_dir, initial_model)).train()
    return run_dir


@pytest.mark.triton
def test_the_trainer_runs_the_triton_kernels(initial_model, tmp_path):
    """Under TRITON_INTERPRET=1 (tests/conftest.py) the trainer's math is the Triton kernels, not a second copy:
    a spy records which kernel modules the loss and advantages launched."""
    import importlib
    from unittest import mock

    # importlib: the package re-exports functions under these module names
    advantage_module = importlib.import_module("r1_megatron.kernels.group_advantage")
    loss_module = importlib.import_module("r1_megatron.kernels.grpo_loss")
    calls: list[str] = []

    def spy(real):
        return lambda name: calls.append(name) or real(name)

    with mock.patch.object(loss_module, "triton_module", spy(loss_module.triton_module)), \
            mock.patch.object(advantage_module, "triton_module", spy(advantage_module.triton_module)):
        GRPOTrainer(tiny_run(tmp_path / "run", initial_model, steps=2)).train()
    assert {"grpo_loss_triton", "group_advantage_triton"} <= set(calls)
    assert all(m["mismatch/max"] <= 1e-5 and m["grad_norm"] > 0 for m in metrics(tmp_path / "run"))


def test_a_run_logs_checkpoints_exports_and_plots(first_run):
    lines = metrics(first_run)
    assert [m["step"] for m in lines] == [1, 2, 3]
    for m in lines:
        for key in ("reward/total_mean", "accuracy", "response_length/mean", "advantage/zero_group_frac", "loss/kl",
                    "loss/clip_frac", "loss/entropy", "mismatch/max", "grad_norm", "lr",
                    "health/clip_fraction_warning"):
            assert key in m, key
        # the engine generated with the trainer's weights: its logprobs are the training forward's (fp32)
        assert m["mismatch/max"] <= 1e-5 and m["health/mismatch_warning"] == 0
        assert m["loss/entropy"] > 0
    assert lines[1]["loss/kl"] > 0  # the policy moved away from the reference after the first update
    assert all(m["grad_norm"] > 0 for m in lines)
    assert sorted(p.name for p in (first_run / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000003"]
    assert (first_run / "hf" / "config.json").is_file()
    assert (first_run / "plots" / "summary.png").is_file()
    shown = samples(first_run)  # what the model wrote: one completion of each of the step's 4 prompts
    assert [s["step"] for s in shown] == [1] * 4 + [2] * 4 + [3] * 4
    assert len({s["prompt"] for s in shown[:4]}) == 4 and all(s["prompt"].endswith("=") for s in shown)
    for s in shown:
        assert s["rewards"].keys() == {"arithmetic_exact", "starts_with_one"}
        assert s["reward"] == sum(s["rewards"].values()) and s["finish_reason"] in ("stop", "length")
        assert s["completion"].startswith("1") == (s["rewards"]["starts_with_one"] == 1.0)


def test_the_same_seed_gives_the_same_metrics(first_run, initial_model, tmp_path):
    GRPOTrainer(tiny_run(tmp_path / "again", initial_model)).train()
    assert metrics(tmp_path / "again") == metrics(first_run)


def test_a_run_directory_with_checkpoints_is_not_overwritten(first_run, initial_model):
    with pytest.raises(ValueError, match=r"already holds a run \(checkpoints\): resume it with `--resume"):
        GRPOTrainer(tiny_run(first_run, initial_model))


def test_a_new_run_refuses_a_directory_with_logged_steps(first_run, initial_model, tmp_path):
    shutil.copytree(first_run, tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints")  # e.g. killed before its first checkpoint
    with pytest.raises(ValueError, match=r"already holds a run \(metrics\)"):
        GRPOTrainer(tiny_run(tmp_path / "run", initial_model))


def test_resume_without_a_checkpoint_refuses_to_redo_logged_steps(first_run, initial_model, tmp_path):
    """Earlier, --resume of a run with no checkpoint silently started again from step 0."""
    shutil.copytree(first_run, tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    with pytest.raises(ValueError, match=r"no checkpoint to resume from, and 3 logged step\(s\) would be redone"):
        GRPOTrainer(tiny_run(tmp_path / "run", initial_model), resume=True)


def test_the_warm_start_is_checkpointed_and_a_kill_during_it_restarts_cleanly(initial_model, tmp_path, monkeypatch,
                                                                              capsys):
    def with_warm_start(run_dir):
        cfg = tiny_run(run_dir, initial_model, steps=2)
        cfg.warm_start = WarmStartConfig(max_steps=4, eval_every=2, eval_prompts=8, batch_size=8, lr=1e-3)
        return cfg

    GRPOTrainer(with_warm_start(tmp_path / "whole")).train()
    killed = tmp_path / "killed"
    real_warm_start = trainer_module.warm_start

    def killed_during_warm_start(*args, **kwargs):
        assert (killed / "config.yaml").is_file()  # the run directory is written before any long work
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "warm_start", killed_during_warm_start)
    with pytest.raises(KeyboardInterrupt):
        GRPOTrainer(with_warm_start(killed))
    monkeypatch.setattr(trainer_module, "warm_start", real_warm_start)
    GRPOTrainer(with_warm_start(killed), resume=True)  # restarts; "killed" right after the warm start's checkpoint
    assert "no checkpoint yet (stopped before its first step); starting over" in capsys.readouterr().out
    assert (killed / "checkpoints" / "step_00000000").is_dir()

    def must_not_run(*args, **kwargs):
        raise AssertionError("the warm start ran again after its checkpoint")

    monkeypatch.setattr(trainer_module, "warm_start", must_not_run)
    GRPOTrainer(with_warm_start(killed), resume=True).train()
    assert metrics(killed) == metrics(tmp_path / "whole")
    assert "warm_start/accuracy" in metrics(killed)[0]


def test_resume_continues_to_the_same_metrics(first_run, initial_model, tmp_path):
    """Stop after step 2 (its checkpoint), resume to step 3: the same metrics as the uninterrupted run."""
    GRPOTrainer(tiny_run(tmp_path / "run", initial_model, steps=2)).train()
    cfg = tiny_run(tmp_path / "run", initial_model, steps=3)
    trainer = GRPOTrainer(cfg, resume=True)
    assert trainer.step == 2
    trainer.train()
    assert metrics(tmp_path / "run") == metrics(first_run)
    assert samples(tmp_path / "run") == samples(first_run)


@pytest.mark.parametrize("layout", ["ep2", "tp2", "pp2"])
def test_two_processes_give_the_single_process_metrics(first_run, initial_model, tmp_path, layout):
    """With the distributed optimizer (which used to crash at the first step): at EP2 the dense parameters' Adam
    state is sharded over 2 data-parallel ranks, at TP2 and PP2 over 1; all match the 1-process plain optimizer.
    PP2 generates through both stages and logs the loss statistics its last stage computed."""
    from r1_megatron.models import load_hf
    from tests.parallel.launch import torchrun

    torchrun("grpo", tmp_path, nproc=2, extra=(layout, "2", str(initial_model)))
    load_hf(tmp_path / layout / "hf")  # the final policy, exported at the run's own layout, with its tokenizer
    assert (tmp_path / layout / "hf" / "tokenizer.json").is_file()
    ours, want = metrics(tmp_path / layout), metrics(first_run)[:2]
    assert [m["step"] for m in ours] == [1, 2]
    for got, ref in zip(ours, want):
        assert got.keys() == ref.keys()
        for key in ref:  # the same samples and rewards; losses and norms within fp32 reduction-order noise
            assert got[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-5), (layout, got["step"], key)


def test_bf16_with_the_distributed_optimizer_trains(initial_model, tmp_path):
    cfg = tiny_run(tmp_path / "run", initial_model, steps=2)
    cfg.model.dtype = "bf16"
    cfg.optimizer.distributed_optimizer = True
    GRPOTrainer(cfg).train()
    lines = metrics(tmp_path / "run")
    assert [m["step"] for m in lines] == [1, 2]
    assert all(m["grad_norm"] > 0 and m["lr"] == 1e-3 for m in lines)
    assert lines[1]["loss/kl"] > 0  # the bf16 weights moved: the fp32 main shards were copied back into them
    assert (tmp_path / "run" / "hf" / "config.json").is_file()


def test_algorithm_variants_run(initial_model, tmp_path):
    """DAPO/Dr.GRPO-style options together: clip-higher, dual clip, dynamic sampling, masked truncation, the
    constant normaliser, no std, recomputed old logprobs, μ = 2 epochs, a reference refreshed every step."""
    cfg = tiny_run(tmp_path / "run", initial_model, steps=2, clip_eps_high=0.28, dual_clip=3.0, dynamic_sampling=True,
                   dynamic_sampling_rounds=2, mask_truncated=True, loss_agg="seq-mean-token-sum-norm",
                   advantage_std="none", recompute_old_logprobs=True, epochs=2, ref_refresh_steps=1,
                   kl_estimator="k2")
    GRPOTrainer(cfg).train()
    lines = metrics(tmp_path / "run")
    assert [m["step"] for m in lines] == [1, 2]
    for m in lines:
        assert 0 < m["rollout/groups_kept"] <= 1  # only groups whose rewards differ were kept
        assert m["mismatch/max"] <= 1e-5  # recomputed old logprobs equal the engine's
        assert m["grad_norm"] > 0


def test_the_warm_start_trains_on_a_prompt_files_reference_answers(initial_model, tmp_path, capsys):
    """The warm start is an SFT stage on any Task: with prompt files (no held-out set) it trains max_steps steps
    on their (prompt, reference answer) pairs; it used to divide by zero on the empty held-out set."""
    from r1_megatron.data.synthetic import arithmetic_problems, build_arithmetic_tokenizer

    prompts = tmp_path / "prompts.jsonl"  # GSM8K-style solutions under other field names
    prompts.write_text("".join(json.dumps({"problem": r["question"], "solution": f"{r['answer']}=\n#### {r['answer']}"})
                               + "\n" for r in arithmetic_problems(40, seed=3)))
    cfg = tiny_run(tmp_path / "run", initial_model, steps=1)
    cfg.data = DataConfig(paths=[str(prompts)], template="raw", question_field="problem", answer_field="solution",
                          answer_format="gsm8k", tokenizer=build_arithmetic_tokenizer(tmp_path / "tok"))
    cfg.warm_start = WarmStartConfig(max_steps=3, batch_size=8, lr=1e-3)
    trainer = GRPOTrainer(cfg)
    assert "warm start: 3 SFT steps (no held-out examples to stop on)" in capsys.readouterr().out
    assert trainer.warm_start.metrics == {"warm_start/steps": 3}
    trainer.train()
    assert metrics(tmp_path / "run")[0]["warm_start/steps"] == 3


def test_packed_training_passes_match_padded_rows_with_reference_and_recompute(initial_model, tmp_path):
    """The whole step on packed rows (reference log-probs, recomputed old log-probs, the update): step 1 sees the
    same rollout, so its loss, gradient norm and KL equal the padded run's within reduction-order noise."""
    runs = {}
    for name, budget in (("padded", None), ("packed", 16)):
        cfg = tiny_run(tmp_path / name, initial_model, steps=1, loss_agg="token-mean", recompute_old_logprobs=True,
                       max_tokens_per_micro_batch=budget)
        GRPOTrainer(cfg).train()
        runs[name] = metrics(tmp_path / name)[0]
    padded, packed = runs["padded"], runs["packed"]
    assert packed["reward/total_mean"] == padded["reward/total_mean"]  # same rollout
    for key in ("loss/total", "grad_norm", "loss/kl", "loss/entropy", "mismatch/mean"):
        assert packed[key] == pytest.approx(padded[key], rel=1e-4, abs=1e-6), key


def test_a_run_evaluates_the_held_out_problems_before_every_n_steps_and_at_the_end(first_run, initial_model,
                                                                                       tmp_path):
    """evaluation.every_steps=2 over 3 steps: held-out pass@1, pass@4 and cons@4 at steps 0 (before training), 2
    and 3 (the last), in metrics.jsonl and the plots; each evaluation's samples in RUN_DIR/eval/step_N.jsonl
    agree with the logged numbers (correctness re-derived from the texts); a resumed run logs each step once;
    the training itself is the run's without evaluation."""
    from r1_megatron.data.synthetic import arithmetic_reward
    from r1_megatron.evaluation.config import TrainingEvalConfig, TrainingEvalSampling
    from r1_megatron.evaluation.sample_store import read_samples

    def cfg(steps):
        c = tiny_run(tmp_path / "run", initial_model, steps=steps)
        c.evaluation = TrainingEvalConfig(every_steps=2, limit=8, sampling=TrainingEvalSampling(k=4))
        c.evaluation.rewards.num_workers = 1
        return c

    GRPOTrainer(cfg(2)).train()
    GRPOTrainer(cfg(3), resume=True).train()  # resumes after step 2: step 0's evaluation is not logged again
    lines = metrics(tmp_path / "run")
    assert [m["step"] for m in lines] == [0, 1, 2, 3]
    assert set(lines[0]) == {"step"} | {k for k in lines[2] if k.startswith("eval/")}
    assert [("eval/pass@1" in m, "eval/cons@4" in m, "eval/pass@4" in m) for m in lines] == \
        [(True,) * 3, (False,) * 3, (True,) * 3, (True,) * 3]
    for m in (lines[0], lines[2], lines[3]):
        _, records = read_samples(tmp_path / "run" / "eval" / f"step_{m['step']:08d}.jsonl")
        assert len(records) == 8 * 4
        correct = [arithmetic_reward(r["text"], r["reference"]["answer"], stopped=r["finish_reason"] == "stop")
                   for r in records]
        assert m["eval/pass@1"] == pytest.approx(sum(correct) / len(correct))
        assert 0 <= m["eval/cons@4"] <= m["eval/pass@4"] <= 1
    assert (tmp_path / "run" / "plots" / "eval.png").is_file()
    assert [{k: v for k, v in m.items() if not k.startswith("eval/")} for m in lines[1:]] == metrics(first_run)
