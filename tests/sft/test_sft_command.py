"""`r1-megatron train sft` from the command line: a tiny Qwen2 memorises 64 conversations and the exported model
says them back in transformers; kill -9 + --resume gives the weights of an uninterrupted run, bit for bit; the
validation loss is transformers' masked loss; bad input is one line; the built-in default runs."""
import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.models import hf_fixtures
from tests.parallel.launch import ProcessGroup, worker_env


def cli(*args, timeout=400):
    return subprocess.run([sys.executable, "-m", "r1_megatron", *args], env=worker_env(), capture_output=True,
                          text=True, timeout=timeout)


def conversations(n: int, seed: int = 0) -> list[list[dict]]:
    """Short chats in the fixture tokenizer's vocabulary; every fourth has two exchanges."""
    rng, out = random.Random(seed), []
    for i in range(n):
        messages = []
        for _ in range(2 if i % 4 == 3 else 1):
            a, b = rng.randrange(40), rng.randrange(40)
            messages += [{"role": "user", "content": f"What is {a} + {b}?"},
                         {"role": "assistant", "content": f"The sum is {a + b}. #### {a + b}"}]
        out.append(messages)
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    hf_fixtures.qwen2_chat_dir(root / "model")
    for name, chats in (("train", conversations(64)), ("valid", conversations(8, seed=1))):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats))
    recipe = {"model": {"path": str(root / "model"), "dtype": "fp32"},
              "data": {"paths": [str(root / "train.jsonl")], "validation_paths": [str(root / "valid.jsonl")],
                       "max_seq_len": 96},
              "training": {"epochs": 40, "batch_size": 16, "micro_batch_size": 1, "max_tokens_per_micro_batch": 256,
                           "validate_every": 0},
              "optimizer": {"lr": 3.0e-3, "min_lr": 3.0e-4, "decay": "cosine", "warmup_steps": 5, "adam_beta2": 0.999},
              "checkpoint": {"every_steps": 0}, "logging": {"tensorboard": False, "progress": False}}
    (root / "recipe.yaml").write_text(json.dumps(recipe))  # JSON is YAML
    return root


def greedy_texts(hf_dir, chats) -> list[str]:
    """transformers' greedy continuation of each chat's last prompt (prompt ids from the run's own tokenizer:
    transformers 5 loads the fixture's tokenizer as Qwen2Tokenizer, whose pre-tokenizer splits digits)."""
    from transformers import AutoModelForCausalLM

    from r1_megatron.tokenizer import load_tokenizer

    tok = load_tokenizer(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    texts = []
    for messages in chats:
        ids = torch.tensor([tok.encode(tok.apply_chat_template(messages[:-1], add_generation_prompt=True))])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        texts.append(tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True))
    return texts


def test_sft_memorises_conversations_through_the_cli_export_and_transformers(workdir, tmp_path):
    run = tmp_path / "run"
    result = cli("train", "sft", "--config", str(workdir / "recipe.yaml"), f"run_dir={run}")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "sft: 64 training examples, 160 steps of 16 (40.00 epochs)" in result.stdout
    exported = tmp_path / "exported"
    result = cli("export", "--ckpt", str(run), "--out", str(exported))
    assert result.returncode == 0, result.stderr[-4000:]
    chats = conversations(64)
    texts = greedy_texts(exported, chats)
    exact = sum(t == m[-1]["content"] for t, m in zip(texts, chats)) / len(chats)
    assert exact >= 0.95, list(zip(texts, [m[-1]["content"] for m in chats]))[:8]
    assert texts == greedy_texts(run / "hf", chats)  # the run's own export says the same
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 160 and 0.5 < records[-1]["packing/efficiency"] <= 1.0
    assert records[-1]["lr"] == pytest.approx(3.0e-4)  # cosine decay to a tenth of the peak
    assert records[-1]["val/loss"] == pytest.approx(_hf_masked_loss(run / "hf", workdir / "valid.jsonl"), abs=1e-5)


def _hf_masked_loss(hf_dir, path) -> float:
    """transformers' cross-entropy over the assistant tokens (+ their <|im_end|>) of every conversation."""
    from transformers import AutoModelForCausalLM

    from r1_megatron.data.sft_dataset import SFTDataConfig, load_sft_datasets
    from r1_megatron.tokenizer import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    examples = load_sft_datasets(SFTDataConfig(paths=(str(path),), shuffle=False), load_tokenizer(hf_dir)).train
    total = count = 0.0
    for e in examples.examples:
        ids = torch.tensor([e.tokens])
        with torch.no_grad():
            ce = torch.nn.functional.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:], reduction="none")
        mask = torch.tensor(e.loss_mask)
        total, count = total + float((ce * mask).sum()), count + float(mask.sum())
    return total / count


def test_sft_resume_after_sigkill_is_bit_identical(workdir, tmp_path):
    short = ["training.epochs=3", "checkpoint.every_steps=4"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert cli("train", "sft", "--config", str(workdir / "recipe.yaml"), f"run_dir={straight}", *short).returncode == 0
    cmd = [sys.executable, "-m", "r1_megatron", "train", "sft", "--config", str(workdir / "recipe.yaml"),
           f"run_dir={killed}", *short]
    with ProcessGroup(cmd, worker_env(), capture=False) as proc:
        deadline = time.time() + 300
        while not (killed / "checkpoints" / "step_00000004").is_dir():
            assert proc.poll() is None and time.time() < deadline, "the run to be killed ended before its checkpoint"
            time.sleep(0.05)
        time.sleep(0.2)  # into step 5 or later, nothing of which may survive
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (killed / "hf").exists()
    result = cli("train", "sft", "--resume", str(killed))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "resumed from" in result.stdout
    a, b = load_file(straight / "hf" / "model.safetensors"), load_file(killed / "hf" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("args, message", [
    (["training.epochs=0"], "training.epochs must be > 0 (or set training.steps), got 0.0"),
    (["data.templat=chat"], "unknown key 'data.templat' (did you mean 'template'?)"),
    (["data.overlong=cut"], "data.overlong: expected one of 'truncate', 'drop', got 'cut'"),
    (["training.max_tokens_per_micro_batch=16"], "training.max_tokens_per_micro_batch=16 is below data.max_seq_len"),
    (["data.paths=[/nonexistent.jsonl]"], "/nonexistent.jsonl"),
])
def test_bad_sft_input_is_one_line(workdir, tmp_path, args, message):
    result = cli("train", "sft", "--config", str(workdir / "recipe.yaml"), f"run_dir={tmp_path / 'run'}", *args)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_a_bad_record_names_its_file_line_and_field(workdir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": conversations(1)[0]}) + "\n" +
                   json.dumps({"messages": [{"role": "assitant", "content": "hi"}]}) + "\n")
    result = cli("train", "sft", "--config", str(workdir / "recipe.yaml"), f"run_dir={tmp_path / 'run'}",
                 f"data.paths=[{bad}]")
    assert result.returncode == 2 and f"{bad}:2: field 'messages'" in result.stderr, result.stderr


def test_the_built_in_sft_demo_runs_end_to_end(tmp_path):
    run = tmp_path / "demo"
    result = cli("train", "sft", f"run_dir={run}", "training.steps=6", "training.validate_every=3", "optimizer.warmup_steps=2",
                 "logging.progress=false")
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(0, 7))  # step 0: the demo's evaluation before training
    assert "val/loss" in records[3] and "val/loss" in records[6] and "val/loss" not in records[4]
    assert [r["step"] for r in records if "eval/pass@1" in r] == [0, 6]  # and after the last step
    assert (run / "hf" / "model.safetensors").is_file() and (run / "plots" / "summary.png").is_file()
    assert (run / "hf" / "tokenizer.json").is_file()
