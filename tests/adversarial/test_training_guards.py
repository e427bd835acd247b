"""Training safety under bad values and bad luck: config values that would switch a safety off, steps whose loss
or gradients are NaN/Inf, a run that diverges for real, checkpoints and exports of non-finite weights, and a disk
that fills up during a checkpoint save. Each case states the bad input and asserts what happens instead of
silently training on NaN (before: `optimizer.lr=.inf` exited 0 with 180,384 of 180,388 weights NaN)."""
import contextlib
import errno
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from r1_megatron.cli import main
from r1_megatron.training import checkpoint_safety
from r1_megatron.training.checkpoint import latest_checkpoint, load_checkpoint, load_checkpoint_model, save_checkpoint
from r1_megatron.training.checkpoint_safety import CheckpointRefused, ran_out_of_space, state_bytes, tree_bytes
from r1_megatron.training.losses import next_token_cross_entropy
from r1_megatron.training.optimizer import OptimizerSettings
from r1_megatron.training.step import train_step, unwrap
from tests.grpo.test_cli import TINY
from tests.parallel.launch import worker_env
from tests.training.guard_fixtures import adam_state, batch, inf_gradient, nan_loss, same, trainer, weights


# ---- values that would switch a safety off are refused at the config --------------------------------------


@pytest.mark.parametrize("algorithm, override, message", [
    ("grpo", "optimizer.lr=.inf", "optimizer.lr: expected a finite float, got inf"),
    ("grpo", "optimizer.clip_grad=.inf", "optimizer.clip_grad: expected a finite float, got inf"),  # clipping off
    ("sft", "optimizer.lr=1e999", "optimizer.lr: expected a finite float, got inf"),  # a YAML string, inf as float
    ("sft", "optimizer.adam_eps=.nan", "optimizer.adam_eps: expected a finite float, got nan"),
    ("grpo", "algorithm.kl_coef=-.inf", "algorithm.kl_coef: expected a finite float, got -inf"),  # every section
])
def test_a_nonfinite_config_value_is_refused_in_one_line(algorithm, override, message, capsys):
    assert main(["train", algorithm, override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"r1-megatron train: error: command line: {message}"]


def test_a_nonfinite_value_in_a_recipe_names_its_line(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("steps: 2\noptimizer:\n  lr: 3.0e-6\n  clip_grad: .inf   # 'no clipping'\n")
    assert main(["train", "grpo", "--config", str(recipe)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"r1-megatron train: error: {recipe}:4: optimizer.clip_grad: expected a finite float, got inf"]


@pytest.mark.parametrize("field", ["lr", "min_lr", "clip_grad", "adam_beta1", "adam_beta2", "adam_eps",
                                   "weight_decay"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_optimizer_settings_built_in_code_refuse_nonfinite_floats(field, value):
    with pytest.raises(ValueError, match=f"OptimizerSettings.{field} must be finite, got {value}"):
        OptimizerSettings(**{field: value})


# ---- a step with a non-finite loss or gradient changes nothing ------------------------------------------------


@pytest.mark.parametrize("bad_loss", [nan_loss, inf_gradient], ids=["nan_loss", "finite_loss_inf_gradient"])
@pytest.mark.parametrize("clip_grad", [1.0, 0.0])  # 0: Megatron computes no norm, and would not look
def test_a_nonfinite_step_leaves_weights_optimizer_state_and_schedule_untouched(bad_loss, clip_grad):
    poisoned, clean = trainer(clip_grad=clip_grad), trainer(clip_grad=clip_grad)
    train_step(*poisoned, batch(poisoned[0], 1), next_token_cross_entropy)
    before = weights(poisoned[0]), adam_state(poisoned[1]), poisoned[1].param_groups[0]["lr"]
    result = train_step(*poisoned, batch(poisoned[0], 2), bad_loss)
    assert not result.updated and result.nonfinite
    assert not math.isfinite(result.loss) or not math.isfinite(result.grad_norm)
    assert same(weights(poisoned[0]), before[0]) and same(adam_state(poisoned[1]), before[1])
    assert poisoned[1].param_groups[0]["lr"] == before[2]  # warmup: a scheduler step would have raised it
    # the next good step is the one a run that never saw the bad batch takes
    train_step(*poisoned, batch(poisoned[0], 3), next_token_cross_entropy)
    for seed in (1, 3):
        train_step(*clean, batch(clean[0], seed), next_token_cross_entropy)
    assert same(weights(poisoned[0]), weights(clean[0])) and same(adam_state(poisoned[1]), adam_state(clean[1]))
    assert poisoned[1].param_groups[0]["lr"] == clean[1].param_groups[0]["lr"]


# ---- checkpoints never hold non-finite weights, nor replace a good one with a broken one ----------------------


def _saved_trainer(root: Path):
    """A trainer after one step, checkpointed as step 1 under `root`."""
    parts = trainer()
    train_step(*parts, batch(parts[0], 1), next_token_cross_entropy)
    save_checkpoint(root, 1, *parts)
    return parts


def _only_step_1_is_there(root: Path, parts) -> None:
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000001"]  # no partial, no step 2
    assert latest_checkpoint(root).name == "step_00000001"
    fresh = trainer()
    load_checkpoint(latest_checkpoint(root), *fresh)
    assert same(weights(fresh[0]), weights(parts[0])) and same(adam_state(fresh[1]), adam_state(parts[1]))


def test_a_checkpoint_of_nonfinite_weights_is_refused_and_the_previous_one_kept(tmp_path):
    root = tmp_path / "checkpoints"
    parts = _saved_trainer(root)
    name, param = next(iter(unwrap(parts[0]).named_parameters()))
    good = param.detach().clone()
    with torch.no_grad():
        param.view(-1)[3] = float("nan")
    with pytest.raises(CheckpointRefused, match=rf"step_00000002: refusing to save non-finite weights \('model\."
                                                rf"{name}' on rank 0 holds NaN/Inf\); nothing was written"):
        save_checkpoint(root, 2, *parts)
    with torch.no_grad():
        param.copy_(good)
    _only_step_1_is_there(root, parts)


def test_too_little_free_space_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    parts = _saved_trainer(root)
    from r1_megatron.training.checkpoint import _leaves, _sharded_state

    needed = state_bytes(leaf for _, leaf in _leaves(_sharded_state(*parts[:2], with_rng=True)[0]))
    # a lower bound of the size, not far below it: model + Adam state are most of a checkpoint
    assert 0.7 * tree_bytes(root / "step_00000001") < needed <= tree_bytes(root / "step_00000001")
    monkeypatch.setattr(checkpoint_safety.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=2048))
    with pytest.raises(CheckpointRefused, match=rf"step_00000002: no space left on {root} \(needed "
                                                rf"~{checkpoint_safety.human_bytes(needed)}, free 2.0 KiB\); "
                                                "nothing was written$"):
        save_checkpoint(root, 2, *parts)
    monkeypatch.undo()
    _only_step_1_is_there(root, parts)


@contextlib.contextmanager
def _small_filesystem(path: Path, size: str):
    """A tmpfs of `size` mounted at `path` (skips the test where mounting is not permitted)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_disk_that_fills_up_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    # 3 MB: the first checkpoint (~1.8 MB) fits, a second one does not
    with _small_filesystem(tmp_path / "small", "3m") as disk:
        root = disk / "checkpoints"
        parts = _saved_trainer(root)
        with pytest.raises(CheckpointRefused, match=rf"no space left on {root} \(needed ~1\.\d MiB, free "
                                                    r"1\.\d MiB\); nothing was written$"):
            save_checkpoint(root, 2, *parts)  # the estimate says so before writing
        _only_step_1_is_there(root, parts)
        # with the pre-check out of the way, the write itself fails part-way (torch's "unexpected pos" error)
        monkeypatch.setattr("r1_megatron.training.checkpoint.check_space", lambda *args: None)
        with pytest.raises(CheckpointRefused, match=rf"step_00000002: no space left on {root} \(needed ~1\.\d MiB, "
                                                    r"free \d+(\.\d)? [KM]?i?B\); the partial checkpoint was "
                                                    r"removed; the previous checkpoint and `latest` are intact$"):
            save_checkpoint(root, 2, *parts)
        _only_step_1_is_there(root, parts)


def test_what_counts_as_out_of_space(tmp_path, monkeypatch):
    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError as e:
            raise RuntimeError("Worker failure: [enforce fail at inline_container.cc:672]") from e
    except RuntimeError as chained:
        assert ran_out_of_space(chained, tmp_path, still_needed=0)  # ENOSPC down the chain
    assert ran_out_of_space(RuntimeError("write failed: [Errno 28] No space left on device"), tmp_path, 0)
    assert not ran_out_of_space(RuntimeError("Worker failure: unexpected pos 704 vs 598"), tmp_path, 0)
    monkeypatch.setattr(checkpoint_safety.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=4096))
    assert ran_out_of_space(RuntimeError("Worker failure: unexpected pos 704 vs 598"), tmp_path, 0)  # disk ~full


def test_the_final_export_refuses_nonfinite_weights(tmp_path):
    from r1_megatron.training.run import Run
    from r1_megatron.training.run_sections import LoggingConfig, RunConfig

    run = Run(RunConfig(run_dir=str(tmp_path / "run"), logging=LoggingConfig(tensorboard=False, progress=False)))
    policy = run.build_policy()
    with torch.no_grad():
        next(unwrap(policy).parameters()).view(-1)[0] = float("inf")
    run.step = 1
    with pytest.raises(ValueError, match="refusing to export non-finite weights, nothing was written"):
        run.finish(total_steps=1)  # what every trainer's train() ends with
    assert not (tmp_path / "run" / "hf").exists()


# ---- a run that diverges for real stops after K skipped steps, its last good checkpoint kept --------------------

DIVERGING = {  # lr 1e30: step 1's update is finite (weights ~1e30), every later forward overflows to NaN
    "grpo": ["steps=6", *TINY, "evaluation.every_steps=0", "evaluation.at_start=false"],
    "sft": ["training.steps=6", "logging.tensorboard=false", "logging.progress=false", "checkpoint.every_steps=2",
            "evaluation.every_steps=0", "optimizer.warmup_steps=0"],
}


@pytest.mark.parametrize("algorithm", sorted(DIVERGING))
def test_a_diverging_run_stops_after_k_skipped_steps_and_keeps_its_last_good_checkpoint(algorithm, tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "r1_megatron", "train", algorithm, f"run_dir={run_dir}",
                          *DIVERGING[algorithm], "optimizer.lr=1e30"], env=worker_env(), capture_output=True,
                         text=True, timeout=300)
    checkpoints = run_dir / "checkpoints"
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == (
        "r1-megatron train: error: stopped: 3 consecutive steps had a non-finite loss/gradient (last: step 4, loss "
        "nan, grad norm nan; optimizer.max_consecutive_skips=3); the last good checkpoint is "
        f"{checkpoints / 'step_00000002'}"), out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    for step in (2, 3, 4):
        assert f"warning: step {step}: skipped 1 optimizer update(s) with a non-finite loss/gradient" in out.stdout
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m["train/skipped_updates"]) for m in metrics] == [(1, 0), (2, 1), (3, 2), (4, 3)]
    # no checkpoint of the stopping step (4 was due), no export of the final model
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000002"]
    assert not (run_dir / "hf").exists()
    model = load_checkpoint_model(latest_checkpoint(checkpoints))
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
