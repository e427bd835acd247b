"""A micro pipeline for tests: three SFT stages of the tiny dense preset on the synthetic chats (seconds each),
each starting from the previous stage's model, and an evaluation of the last one on a held-out benchmark."""
from __future__ import annotations

import json
from pathlib import Path

from r1_megatron.data.synthetic_chat import chat_questions

_SFT = {"data": {"synthetic": "chat", "num_synthetic": 32, "template": "chat", "max_seq_len": 128},
        "training": {"batch_size": 8, "max_tokens_per_micro_batch": 256},
        "optimizer": {"lr": 3.0e-3, "min_lr": 3.0e-4, "decay": "cosine", "warmup_steps": 0},
        "evaluation": {"every_steps": 0}, "checkpoint": {"every_steps": 0},
        "logging": {"tensorboard": False, "progress": False}}


def _sft(model: dict, steps: int, **sections) -> dict:
    config = json.loads(json.dumps(_SFT))
    config["model"] = {**model, "dtype": "fp32"}
    config["training"]["steps"] = steps
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def write_benchmark(root: Path) -> Path:
    """8 held-out questions of the chats' task, exact answer after </think>."""
    questions = root / "chat_held_out.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in chat_questions(8, seed=99)))
    spec = {"benchmarks": {"chat": {"path": str(questions), "scorer": "exact", "answer_format": "raw", "k": 2,
                                    "cons_k": 2}}}
    (root / "benchmarks.yaml").write_text(json.dumps(spec))
    return root / "benchmarks.yaml"


def micro_recipe(root: Path, run_dir: Path) -> Path:
    """base (6 steps from random init) -> middle (12 steps from base, a checkpoint every 2) -> final (4 steps from
    middle, its own evaluation at steps 0 and 4, then the pipeline's evaluation)."""
    benchmarks = write_benchmark(root)
    own_eval = {"every_steps": 4, "at_start": True, "limit": 8, "sampling": {"k": 2, "max_new_tokens": 40},
                "rewards": {"num_workers": 1}}
    recipe = {
        "run_dir": str(run_dir),
        "seed": 3,
        "eval": {"dtype": "fp32", "benchmarks": {"file": str(benchmarks), "names": ["chat"]},
                 "sampling": {"k": 2, "max_new_tokens": 40}, "engine": {"max_batch_size": 16},
                 "rewards": {"num_workers": 1}, "progress": False},
        "stages": {
            "base": {"command": "sft", "eval": False, "config": _sft({"preset": "tiny-dense"}, 6)},
            "middle": {"command": "sft", "eval": False,
                       "config": _sft({"path": "${base.model}"}, 12, checkpoint={"every_steps": 2},
                                      data={"seed": 1})},
            "final": {"command": "sft", "config": _sft({"path": "${middle.model}"}, 4, evaluation=own_eval,
                                                       data={"seed": 2})},
        },
    }
    path = root / "pipeline.yaml"
    path.write_text(json.dumps(recipe, indent=1))  # JSON is YAML; one key per line, so errors name lines
    return path


def sample_recipe(root: Path, run_dir: Path) -> Path:
    """The micro pipeline with its middle stage rejection sampling from base (every sample kept: the point is the
    plumbing) and final trained on those samples with base's tokenizer: sft -> sample -> sft."""
    recipe = micro_recipe(root, run_dir)
    data = json.loads(recipe.read_text())
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(q) + "\n" for q in chat_questions(8, seed=5)))
    off = {"language": {"min_consistency": None}, "max_paragraph_chars": None, "code_blocks": "keep", "dedup": "none"}
    data["stages"]["middle"] = {"command": "sample", "config": {
        "model": {"path": "${base.model}", "dtype": "fp32"},
        "data": {"paths": [str(prompts)], "template": "chat", "answer_format": "raw"},
        "sampling": {"k": 2, "max_new_tokens": 40}, "keep": {"require": {}}, "filters": off,
        "rewards": {"weights": {"exact_answer": 1.0}, "accuracy": "exact_answer", "format": None,
                    "num_workers": 1},
        "engine": {"max_batch_size": 16}, "progress": False}}
    final = data["stages"]["final"]["config"]
    final["model"]["path"] = "${base.model}"
    final["data"] = {"paths": ["${middle.samples}"], "tokenizer": "${base.tokenizer}", "template": "chat",
                     "max_seq_len": 128}
    final["evaluation"] = {"every_steps": 0}
    recipe.write_text(json.dumps(data, indent=1))
    return recipe
