"""The path a new user takes: an HF Qwen2 checkpoint with a BPE tokenizer and chat template (here tiny and random),
a GSM8K-style JSONL ("#### 72" answers), the shipped 7B recipe scaled down on the command line, with its
distributed optimizer, at 1 process and under torchrun at TP2 and DP2. Every run ends with an `hf/` directory that
transformers loads with its chat template and decodes greedily into the tokens our engine generates."""
import json
import sys

import pytest
import torch

from r1_megatron.models import load_hf
from r1_megatron.rollout import Engine, SamplingParams
from r1_megatron.tokenizer import load_tokenizer
from tests.models.hf_fixtures import qwen2_chat_dir
from tests.parallel.launch import ROOT, run_to_end

RECIPE = ROOT / "examples" / "qwen2.5-math-7b_1node.yaml"
QUESTIONS = [("What is 3 + 4?", 7), ("What is 12 + 30?", 42)]


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    model = qwen2_chat_dir(root / "Qwen2-tiny")
    data = root / "gsm8k_train.jsonl"
    records = [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have now?",
                "answer": f"He has {a} + {b} = {a + b} apples.\n#### {a + b}"} for a in range(3, 11) for b in (2, 5)]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    return model, data


def scaled_down(run_dir, model, data, tp: int) -> list[str]:
    return ["--config", str(RECIPE), f"run_dir={run_dir}", f"model.path={model}", f"data.paths=[{data}]",
            "data.template=chat", "model.dtype=fp32", f"parallel.tp={tp}", "steps=2", "rollout.prompts_per_step=4",
            "rollout.group_size=4", "rollout.max_new_tokens=8", "rollout.max_batch_size=16", "rewards.num_workers=1",
            "checkpoint.every_steps=0", "logging.tensorboard=false", "logging.progress=false"]


LAUNCHES = {
    "1proc": lambda args: [sys.executable, "-m", "r1_megatron", "train", "grpo", *args],
    "tp2": lambda args: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                         "-m", "r1_megatron", "train", "grpo", *args],
}
LAUNCHES["dp2"] = LAUNCHES["tp2"]


@pytest.fixture(scope="module")
def runs(user_files, tmp_path_factory):
    model, data = user_files
    root, out = tmp_path_factory.mktemp("runs"), {}
    for name, launch in LAUNCHES.items():
        stdout, stderr = run_to_end(launch(scaled_down(root / name, model, data, tp=2 if name == "tp2" else 1)),
                                    timeout=400)
        out[name] = (root / name, stdout, stderr)
    return out


@pytest.mark.parametrize("name", list(LAUNCHES))
def test_every_layout_trains_quietly_and_exports_hf(runs, name):
    run_dir, stdout, stderr = runs[name]
    assert "Warning" not in stderr, stderr[-3000:]  # nothing a user cannot act on, under torchrun too
    # the "#### N" references were read as GSM8K answers, said once, and math-verify parses every one of them
    assert stdout.count("answer_format=auto read the reference answer of 16 records as GSM8K") == 1, stdout
    assert "warning:" not in stdout
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # step 0: the recipe's evaluation (the shipped AIME sample) before training; again after the last step
    assert [m["step"] for m in lines] == [0, 1, 2] and all(m["reward/errors"] == 0 for m in lines[1:])
    assert [("eval/pass@1" in m, "eval/cons@16" in m) for m in lines] == [(True, True), (False, False), (True, True)]
    assert {p.name for p in (run_dir / "hf").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                             "tokenizer_config.json", "chat_template.jinja",
                                                             "generation_config.json"}


def test_the_layouts_sample_the_same_first_step(runs):
    """Sampling seeds are a function of the prompt's global index: before any update every layout generates the
    same completions (DP2's rank 0 shows its 2 of the 4 prompts)."""
    first = {name: [s for s in map(json.loads, (run_dir / "samples.jsonl").read_text().splitlines())
                    if s["step"] == 1] for name, (run_dir, *_) in runs.items()}
    assert first["tp2"] == first["1proc"] and first["dp2"] == first["1proc"][:2]


@pytest.mark.parametrize("name", list(LAUNCHES))
def test_transformers_loads_the_export_with_its_chat_template_and_decodes_like_our_engine(runs, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = runs[name][0] / "hf"
    theirs, ours = AutoTokenizer.from_pretrained(hf), load_tokenizer(hf)
    chats = [[{"role": "user", "content": q}] for q, _ in QUESTIONS]
    prompts = [theirs.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    assert prompts == [ours.apply_chat_template(c) for c in chats]
    prompt_ids = [ours.encode(p) for p in prompts]
    model = AutoModelForCausalLM.from_pretrained(hf).eval()
    assert model.generation_config.eos_token_id == ours.eos_token_id == theirs.eos_token_id
    engine = Engine(load_hf(hf), max_batch_size=2, max_seq_len=64, eos_token_ids=[ours.eos_token_id])
    with engine.generating():
        completions = engine.generate(prompt_ids, SamplingParams(temperature=0, max_new_tokens=10))
    for ids, completion in zip(prompt_ids, completions):
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=10)
        assert out[0, len(ids):].tolist() == completion.token_ids
