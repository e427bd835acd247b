"""The GRPO run's Task (r1_megatron/task.py) from its data config: tokenizer, prompt dataset, scorer and (for the
synthetic demo) held-out problems and a generator of fresh ones; plus the start-up checks of the data against the
run's rewards."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Callable

from r1_megatron.data.prompt_dataset import PromptDataConfig, PromptDataset
from r1_megatron.data.synthetic import arithmetic_problems, build_arithmetic_tokenizer
from r1_megatron.rewards.reference_check import ReferenceCheck, check_references
from r1_megatron.rewards.sandbox import SandboxConfig, describe
from r1_megatron.task import Task
from r1_megatron.tokenizer import load_tokenizer

from .config import DataConfig, GRPORunConfig, RewardsConfig

HELD_OUT_SEED_OFFSET = 1_000_003  # held-out problems come from a different stream than training prompts
SYNTHETIC_SCORER = {"arithmetic": "arithmetic_exact"}


# a reward that cannot read this share of the checked references gets a start-up warning
UNUSABLE_REFERENCE_WARN_FRACTION = 0.1


def build_task(cfg: GRPORunConfig, say: Callable[[str], None] = print) -> Task:
    """The tokenizer and prompts; `say` gets the start-up notes on the data (what was converted, skipped or
    looks unusable for the run's rewards), one line each."""
    data = cfg.data
    tokenizer_dir = _tokenizer_dir(cfg)
    tokenizer = load_tokenizer(tokenizer_dir)
    prompt_cfg = prompt_data_config(data)
    if data.synthetic is None:
        task = Task(name=",".join(data.paths), tokenizer=tokenizer, tokenizer_dir=tokenizer_dir,
                    dataset=PromptDataset(prompt_cfg, tokenizer), scorer=cfg.rewards.accuracy or "math_accuracy")
    else:
        records = arithmetic_problems(data.num_synthetic, data.seed, data.arithmetic)
        dataset = PromptDataset.from_records(records, prompt_cfg, tokenizer, source=prompt_cfg.paths[0])
        generator = functools.partial(arithmetic_problems, config=data.arithmetic)
        task = Task(name=data.synthetic, tokenizer=tokenizer, tokenizer_dir=tokenizer_dir, dataset=dataset,
                    scorer=SYNTHETIC_SCORER[data.synthetic], generator=generator)
        held_out = arithmetic_problems(cfg.warm_start.eval_prompts, data.seed + HELD_OUT_SEED_OFFSET, data.arithmetic)
        task.held_out = task.samples(held_out, source="held-out")
    for line in task.dataset.notes() + reference_warnings(cfg, task.dataset) + sandbox_notes(cfg.rewards):
        say(line)
    return task


def sandbox_notes(rewards: RewardsConfig) -> list[str]:
    """Which Python runs the completions' code and how it is contained, when a reward runs code."""
    if "code_tests" not in rewards.weights:
        return []
    python = dict(rewards.reward_kwargs).get("code_tests", {}).get("python")
    return [describe(SandboxConfig(wall_s=30, python=python))]


def prompt_data_config(data: DataConfig) -> PromptDataConfig:
    return PromptDataConfig(paths=tuple(data.paths) or (f"synthetic:{data.synthetic}",),
                            question_field=data.question_field, answer_field=data.answer_field,
                            tests_field=data.tests_field, kind_field=data.kind_field,
                            template=data.template,
                            max_prompt_tokens=data.max_prompt_tokens, seed=data.seed, on_error=data.on_error,
                            answer_format=data.answer_format)


def reference_warnings(cfg: GRPORunConfig, dataset: PromptDataset) -> list[str]:
    """One warning per reward of the run that cannot read a large share of a bounded sample of the references."""
    samples = [(s.source, s.reward_sample()) for s in dataset.samples]
    return [_reference_warning(r) for r in check_references(list(cfg.rewards.rule_weights), samples)
            if r.failed and r.failed_fraction >= UNUSABLE_REFERENCE_WARN_FRACTION]


_WHAT_TO_CHECK = {"answer": "data.answer_field and data.answer_format (gsm8k, boxed, raw)",
                  "tests": "data.tests_field and the test format (docs/data.md)"}


def _reference_warning(r: ReferenceCheck) -> str:
    value = " ".join(str(r.first_value).split())  # one line
    value = value if len(value) <= 80 else value[:77] + "..."
    return (f"warning: {r.reward} cannot use the {r.first_field or 'reference data'} of {r.failed} of the "
            f"{r.checked} records checked ({r.failed_fraction:.0%}), so it scores 0 on them; first: "
            f"{r.first_source}: {value!r}: {r.first_problem}; check {_WHAT_TO_CHECK.get(r.first_field, 'the data')}")


def _tokenizer_dir(cfg: GRPORunConfig) -> str:
    if cfg.data.tokenizer is not None:
        return cfg.data.tokenizer
    if cfg.data.synthetic == "arithmetic":
        return build_arithmetic_tokenizer(Path(cfg.run_dir) / "tokenizer")
    if cfg.model.path is None:
        raise ValueError("data.tokenizer: a preset model with prompt files needs a tokenizer directory")
    return cfg.model.path


def sample_seed(run_seed: int, step: int, prompt_index: int, round_: int = 0) -> int:
    """The sampling seed of a prompt's group: a function of (run seed, step, global prompt index, sampling round)
    only, so the same run samples the same tokens at any parallel layout and after a resume."""
    digest = hashlib.sha256(f"{run_seed}:{step}:{round_}:{prompt_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little", signed=True)
