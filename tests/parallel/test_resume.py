"""Resume after kill -9 loses nothing, a crash during save never costs the previous checkpoint, and any
checkpoint exports to an HF directory that transformers loads."""
import logging
import os
import signal
import sys
import time

import pytest
import torch

from tests.models import hf_fixtures
from tests.parallel.launch import ROOT, ProcessGroup, run_to_end, worker_env

WORKER = [sys.executable, str(ROOT / "tests" / "parallel" / "worker.py")]


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "ckpt"
    hf_fixtures.deepseek_v3().save_pretrained(path)
    return path


def test_resume_after_sigkill_is_bit_identical(ckpt_dir, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for d in (straight, killed):
        d.mkdir()
        (d / "ckpt").symlink_to(ckpt_dir)
    run_to_end([*WORKER, "run", str(straight), "6", ""])
    with ProcessGroup([*WORKER, "run", str(killed), "6", "3", "1"], worker_env(), capture=False) as proc:
        deadline = time.time() + 300
        while not (killed / "saved").exists():
            assert proc.poll() is None and time.time() < deadline, "the run to be killed ended before its checkpoint"
            time.sleep(0.05)
        time.sleep(0.3)  # let it get into step 4 (nothing of which may survive)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
    run_to_end([*WORKER, "run", str(killed), "6", ""])
    a, b = torch.load(straight / "final-rank0.pt"), torch.load(killed / "final-rank0.pt")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name][1], b[name][1]), name


def _trainer(ckpt_dir):
    from r1_megatron.runtime import ensure_parallel_state, seed_everything
    from tests.parallel import training_fixtures as tf

    ensure_parallel_state()
    seed_everything(0)
    return tf.setup(ckpt_dir)


def test_crash_during_save_keeps_previous_checkpoint(ckpt_dir, tmp_path, monkeypatch, caplog):
    from megatron.core import dist_checkpointing

    from r1_megatron.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    trainer = _trainer(ckpt_dir)
    good = save_checkpoint(tmp_path / "run", 1, *trainer, user_state={"next_step": 1})

    def fail_midway(error):
        def save(state, directory, *args, **kwargs):
            (directory and open(os.path.join(directory, "half-written.distcp"), "w").write("x"))
            raise error
        return save

    # a write that fails with an error: its partial files are removed and the error raised
    monkeypatch.setattr(dist_checkpointing, "save", fail_midway(RuntimeError("bad sector")))
    with pytest.raises(RuntimeError, match="bad sector"):
        save_checkpoint(tmp_path / "run", 2, *trainer, user_state={"next_step": 2})
    assert not list((tmp_path / "run").glob(".partial-*")) and latest_checkpoint(tmp_path / "run") == good
    # a process that dies mid-save (SystemExit stands for the power cut: nothing after it runs) leaves them
    monkeypatch.setattr(dist_checkpointing, "save", fail_midway(SystemExit("node lost power")))
    with pytest.raises(SystemExit, match="node lost power"):
        save_checkpoint(tmp_path / "run", 2, *trainer, user_state={"next_step": 2})
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING):
        found = latest_checkpoint(tmp_path / "run")
    assert found == good
    assert "ignoring partial checkpoint" in caplog.text and ".partial-step_00000002" in caplog.text
    assert load_checkpoint(found, *_trainer(ckpt_dir)).user_state == {"next_step": 1}
    # The next successful save clears the partial one.
    save_checkpoint(tmp_path / "run", 2, *trainer)
    assert not list((tmp_path / "run").glob(".partial-*"))
    assert latest_checkpoint(tmp_path / "run").name == "step_00000002"


def test_export_command_writes_an_hf_model(ckpt_dir, tmp_path, capsys):
    """`r1-megatron export --ckpt RUN_DIR`: the trained weights, the run's tokenizer found through the checkpoint,
    and no warnings; a checkpoint that records no tokenizer still exports, saying so in one line."""
    import subprocess

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1_megatron.cli import main
    from r1_megatron.data.synthetic import build_arithmetic_tokenizer
    from r1_megatron.models import logits
    from r1_megatron.training.checkpoint import save_checkpoint
    from r1_megatron.training.step import unwrap
    from tests.parallel import training_fixtures as tf

    trainer = _trainer(ckpt_dir)
    tf.step(trainer, 0, dp_rank=0, dp_size=1)  # the export must carry the trained weights, not the initial ones
    tokenizer_dir = build_arithmetic_tokenizer(tmp_path / "run" / "tokenizer")
    save_checkpoint(tmp_path / "run" / "checkpoints", 1, *trainer, tokenizer_dir=tokenizer_dir)
    (tmp_path / "run").rename(tmp_path / "moved")  # the run's own tokenizer is recorded relative to it
    out = subprocess.run([sys.executable, "-m", "r1_megatron", "export", "--ckpt", str(tmp_path / "moved"), "--out",
                          str(tmp_path / "hf")], env=worker_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Warning" not in out.stderr, out.stderr[-3000:]
    assert "exported step 1" in out.stdout and "no tokenizer" not in out.stdout
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").float().eval()
    ids = torch.randint(0, 160, (2, 9), generator=torch.Generator().manual_seed(3))
    assert (hf(ids).logits - logits(unwrap(trainer[0]), ids)).abs().max().item() <= 1e-5
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.convert_ids_to_tokens(hf.generation_config.eos_token_id) == tokenizer.eos_token == "<eos>"
    save_checkpoint(tmp_path / "bare", 1, *trainer)
    capsys.readouterr()
    assert main(["export", "--ckpt", str(tmp_path / "bare" / "step_00000001"), "--out", str(tmp_path / "hf2")]) == 0
    said = capsys.readouterr().out.splitlines()
    assert len(said) == 2 and said[1].startswith("no tokenizer files were copied")
    assert (tmp_path / "hf2" / "model.safetensors").is_file() and not (tmp_path / "hf2" / "tokenizer.json").exists()
    assert main(["export", "--ckpt", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
