"""`r1-megatron pipeline` from the command line on the micro pipeline (three tiny SFT stages, each from the last
one's model, the last evaluated): the stages run in order in one process and end with the table; kill -9 in the
middle stage + the same command again skips the finished stage, resumes the middle one from its checkpoint and
ends with the final weights of an uninterrupted run, bit for bit."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.parallel.launch import ProcessGroup, worker_env
from tests.pipeline.micro_recipe import micro_recipe


def pipeline(recipe, *overrides):
    return subprocess.run([sys.executable, "-m", "r1_megatron", "pipeline", "--config", str(recipe), *overrides],
                          env=worker_env(), capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    recipe = micro_recipe(root, root / "run")
    result = pipeline(recipe)
    assert result.returncode == 0, result.stderr[-4000:]
    return root, recipe, result.stdout


def test_the_micro_pipeline_runs_its_stages_in_order_and_ends_with_the_table(straight):
    root, _, stdout = straight
    run = root / "run"
    starts = [stdout.index(f"pipeline: stage {name} (sft): starting") for name in ("base", "middle", "final")]
    assert starts == sorted(starts)
    rows = json.loads((run / "pipeline.json").read_text())
    assert [(r["stage"], r["count"]) for r in rows] == [("base", 6), ("middle", 12), ("final", 4)]
    assert "eval" not in rows[0] and "eval" not in rows[1]  # eval: false
    final = rows[2]
    assert set(final["eval"]) == {"chat"} and set(final["eval"]["chat"]) == {"pass@1", "cons@2"}
    results = json.loads((run / "stages" / "final" / "eval" / "results.json").read_text())["results"]["chat"]
    assert final["eval"]["chat"]["pass@1"] == results["pass@1"] and results["questions"] == 8
    own = [json.loads(line) for line in (run / "stages" / "final" / "metrics.jsonl").read_text().splitlines()]
    assert final["pass@1_before"] == own[0]["eval/pass@1"] and own[0]["step"] == 0
    # each stage started from the one before: the middle stage's model came from base's HF export
    config = json.loads((run / "stages" / "middle" / "stage_config.json").read_text())["config"]
    assert config["model"]["path"] == str(run / "stages" / "base" / "hf")
    table = (run / "pipeline.md").read_text()
    assert table.strip() in stdout and table.splitlines()[0].startswith("| stage | command | wall time |")
    assert table.splitlines()[4].startswith("| final | sft |") and "4 steps" in table.splitlines()[4]


def test_kill_9_in_the_middle_stage_then_the_same_command_resumes_bit_identically(straight, tmp_path):
    root, _, _ = straight
    killed = tmp_path / "run"
    recipe = micro_recipe(tmp_path, killed)
    cmd = [sys.executable, "-m", "r1_megatron", "pipeline", "--config", str(recipe)]
    with ProcessGroup(cmd, worker_env(), capture=False) as proc:
        deadline = time.time() + 300
        while not (killed / "stages" / "middle" / "checkpoints" / "step_00000004").is_dir():
            assert proc.poll() is None and time.time() < deadline, "the pipeline ended before the middle checkpoint"
            time.sleep(0.05)
        time.sleep(0.1)  # into step 5 or later, nothing of which may survive
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (killed / "stages" / "base" / "stage.json").is_file()
    assert not (killed / "stages" / "middle" / "stage.json").exists()
    result = pipeline(recipe)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "pipeline: stage base (sft) finished in an earlier run: skipped" in result.stdout
    assert "pipeline: stage middle (sft): resuming" in result.stdout and "resumed from" in result.stdout
    rows = json.loads((killed / "pipeline.json").read_text())
    assert [(r["stage"], r.get("skipped", False), r["resumed"]) for r in rows] == [
        ("base", True, False), ("middle", False, True), ("final", False, False)]
    for stage in ("middle", "final"):
        a = load_file(root / "run" / "stages" / stage / "hf" / "model.safetensors")
        b = load_file(killed / "stages" / stage / "hf" / "model.safetensors")
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (stage, name)


def test_sft_then_rejection_sampling_then_sft_on_the_samples(tmp_path):
    from tests.pipeline.micro_recipe import sample_recipe

    run = tmp_path / "run"
    result = pipeline(sample_recipe(tmp_path, run))
    assert result.returncode == 0, result.stderr[-4000:]
    rows = json.loads((run / "pipeline.json").read_text())
    assert [(r["stage"], r["command"], r["count"]) for r in rows] == [
        ("base", "sft", 6), ("middle", "sample", 16), ("final", "sft", 4)]  # 8 prompts x 2 samples, all kept
    samples = (run / "stages" / "middle" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 16 and "sft: 16 training examples" in result.stdout  # the final stage read them
    assert set(rows[2]["eval"]) == {"chat"}
