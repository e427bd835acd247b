"""`r1-megatron train grpo` from the command line: one-line errors, and kill -9 + resume gives the weights of an
uninterrupted run, bit for bit."""
import os
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from r1_megatron.data.synthetic import build_arithmetic_tokenizer
from tests.parallel.launch import ProcessGroup, worker_env

TINY = ["rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_batch_size=16", "warm_start.max_steps=0",
        "data.num_synthetic=200", "logging.tensorboard=false", "logging.progress=false", "checkpoint.every_steps=2",
        "rewards.weights={arithmetic_exact: 1.0, starts_with_one: 1.0}",
        "rewards.plugin_modules=[tests.grpo.reward_plugin]", "algorithm.micro_batch_size=16",
        "optimizer.distributed_optimizer=true"]  # what every GPU recipe sets (it used to crash at the first step)


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "r1_megatron", "train", "grpo", *args], env=worker_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["algorithm.kl_cof=0.1"], "unknown key 'algorithm.kl_cof' (did you mean 'kl_coef'?)"),
    (["rollout.group_size=two"], "rollout.group_size: expected int, got 'two'"),
    (["data.synthetic=null", "data.paths=[/nonexistent/prompts.jsonl]", "data.tokenizer={tok}",
      "warm_start.max_steps=0"],
     "/nonexistent/prompts.jsonl"),
    (["--config", "/nonexistent/recipe.yaml"], "/nonexistent/recipe.yaml"),
    # a wrong model path is reported as such, not as a missing tokenizer (the tokenizer comes from model.path)
    (["model.preset=null", "model.path=/nonexistent/Qwen2.5-Math-7B", "data.synthetic=null",
      "data.paths=[/nonexistent/prompts.jsonl]", "warm_start.max_steps=0"],
     "model.path=/nonexistent/Qwen2.5-Math-7B: no such directory"),
])
def test_bad_config_and_missing_files_give_one_line(args, message, tmp_path):
    tokenizer = build_arithmetic_tokenizer(tmp_path / "tokenizer")
    out = cli(f"run_dir={tmp_path / 'run'}", *(a.replace("{tok}", tokenizer) for a in args))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_print_config_shows_every_key_and_reads_back(capsys, tmp_path):
    import dataclasses

    from r1_megatron.cli import main
    from r1_megatron.run_config import load_run_config

    assert main(["train", "grpo", "--print-config", "rollout.group_size=3"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "recipe.yaml").write_text(text)
    cfg = load_run_config(tmp_path / "recipe.yaml")
    assert cfg == load_run_config(None, ["rollout.group_size=3"])  # what the run would use, defaults included
    assert "run_dir: runs/tiny_demo-{time}" in text  # a template: each run started from it gets its own directory
    for section in ("model", "parallel", "data", "rollout", "algorithm", "optimizer", "rewards", "checkpoint"):
        for field in dataclasses.fields(getattr(cfg, section)):
            assert f"\n  {field.name}:" in text, (section, field.name)


def _final_weights(run_dir: Path) -> dict:
    return load_file(run_dir / "hf" / "model.safetensors")


def test_kill_9_and_resume_gives_the_uninterrupted_weights(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    out = cli(f"run_dir={whole}", "steps=5", *TINY)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Warning" not in out.stderr, out.stderr[-3000:]  # nothing a user cannot act on
    cmd = [sys.executable, "-m", "r1_megatron", "train", "grpo", f"run_dir={killed}", "steps=5", *TINY]
    with ProcessGroup(cmd, worker_env(), capture=False) as proc:
        deadline = time.time() + 240
        while not (killed / "checkpoints" / "step_00000002").is_dir():  # killed somewhere after the checkpoint
            assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (killed / "hf").exists()
    out = cli("--resume", str(killed))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stdout
    want, got = _final_weights(whole), _final_weights(killed)
    assert want.keys() == got.keys()
    assert all((want[k] == got[k]).all() for k in want)


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "r1_megatron", "train", "grpo", f"run_dir={run_dir}", "steps=1000", *TINY]
    with ProcessGroup(cmd, worker_env()) as proc:
        deadline = time.time() + 240
        while not (run_dir / "checkpoints" / "step_00000002").is_dir():
            assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # what SLURM sends before the time limit
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    stopped = int(latest.removeprefix("step_"))
    assert 2 <= stopped < 1000
    assert f"SIGTERM: checkpointed step {stopped}" in out
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # every finished step was logged, none after the checkpoint (step 0: the demo's evaluation before training)
    assert steps == list(range(0, stopped + 1))
