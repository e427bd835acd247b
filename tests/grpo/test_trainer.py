"""GRPO trainer end to end on CPU (Triton kernels under TRITON_INTERPRET=1): a few steps of a tiny run."""
import json

import pytest

from r1_megatron.grpo.config import (AlgorithmConfig, CheckpointConfig, DataConfig, GRPORunConfig, LoggingConfig,
                                     ModelSourceConfig, RewardsConfig, RolloutConfig)
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


KERNEL_CALLS: list[str] = []


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, initial_model):
    """The 3-step run, recording which Triton kernel modules the trainer's loss and advantages launched."""
    import importlib
    from unittest import mock

    # importlib: the package re-exports functions under these module names
    advantage_module = importlib.import_module("r1_megatron.kernels.group_advantage")
    loss_module = importlib.import_module("r1_megatron.kernels.grpo_loss")

    def spy(real):
        return lambda name: KERNEL_CALLS.append(name) or real(name)

    run_dir = tmp_path_factory.mktemp("grpo") / "run"
    with mock.patch.object(loss_module, "triton_module", spy(loss_module.triton_module)), \
            mock.patch.object(advantage_module, "triton_module", spy(advantage_module.triton_module)):
        GRPOTrainer(tiny_run(run_dir, initial_model)).train()
    return run_dir


def test_loss_and_advantages_run_the_triton_kernels(first_run):
    """Under TRITON_INTERPRET=1 (tests/conftest.py) the trainer's math is the Triton kernels, not a second copy."""
    assert {"grpo_loss_triton", "group_advantage_triton"} <= set(KERNEL_CALLS)


def test_a_run_logs_checkpoints_exports_and_plots(first_run):
    lines = metrics(first_run)
    assert [m["step"] for m in lines] == [1, 2, 3]
    for m in lines:
        for key in ("reward/total_mean", "accuracy", "response_length/mean", "advantage/zero_group_frac", "loss/kl",
                    "loss/clip_frac", "loss/entropy", "mismatch/max", "grad_norm", "lr"):
            assert key in m, key
        # the engine generated with the trainer's weights: its logprobs are the training forward's (fp32)
        assert m["mismatch/max"] <= 1e-5
        assert m["loss/entropy"] > 0
    assert lines[1]["loss/kl"] > 0  # the policy moved away from the reference after the first update
    assert all(m["grad_norm"] > 0 for m in lines)
    assert sorted(p.name for p in (first_run / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000003"]
    assert (first_run / "hf" / "config.json").is_file()
    assert (first_run / "plots" / "summary.png").is_file()


def test_the_same_seed_gives_the_same_metrics(first_run, initial_model, tmp_path):
    GRPOTrainer(tiny_run(tmp_path / "again", initial_model)).train()
    assert metrics(tmp_path / "again") == metrics(first_run)


def test_a_run_directory_with_checkpoints_is_not_overwritten(first_run, initial_model):
    with pytest.raises(ValueError, match="already holds checkpoints: resume it with `--resume"):
        GRPOTrainer(tiny_run(first_run, initial_model))


def test_resume_continues_to_the_same_metrics(first_run, initial_model, tmp_path):
    """Stop after step 2 (its checkpoint), resume to step 3: the same metrics as the uninterrupted run."""
    GRPOTrainer(tiny_run(tmp_path / "run", initial_model, steps=2)).train()
    cfg = tiny_run(tmp_path / "run", initial_model, steps=3)
    trainer = GRPOTrainer(cfg, resume=True)
    assert trainer.step == 2
    trainer.train()
    assert metrics(tmp_path / "run") == metrics(first_run)


@pytest.mark.parametrize("layout", ["ep2", "tp2"])
def test_two_processes_give_the_single_process_metrics(first_run, initial_model, tmp_path, layout):
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
