"""The run's task: tokenizer, prompt dataset and (for the synthetic demo) held-out problems."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from r1_megatron.data.prompt_dataset import PromptDataConfig, PromptDataset
from r1_megatron.data.synthetic import arithmetic_problems, build_arithmetic_tokenizer
from r1_megatron.tokenizer import Tokenizer, load_tokenizer

from .config import GRPORunConfig

HELD_OUT_SEED_OFFSET = 1_000_003  # held-out problems come from a different stream than training prompts


@dataclasses.dataclass
class Task:
    tokenizer: Tokenizer
    tokenizer_dir: str
    dataset: PromptDataset
    held_out: list[dict]  # {"question", "answer"} records for warm-start evaluation (synthetic task only)


def build_task(cfg: GRPORunConfig) -> Task:
    data = cfg.data
    tokenizer_dir = _tokenizer_dir(cfg)
    tokenizer = load_tokenizer(tokenizer_dir)
    prompt_cfg = PromptDataConfig(paths=tuple(data.paths) or (f"synthetic:{data.synthetic}",),
                                  question_field=data.question_field, answer_field=data.answer_field,
                                  template=data.template, max_prompt_tokens=data.max_prompt_tokens, seed=data.seed)
    if data.synthetic is None:
        return Task(tokenizer, tokenizer_dir, PromptDataset(prompt_cfg, tokenizer), [])
    records = arithmetic_problems(data.num_synthetic, data.seed, data.arithmetic)
    held_out = arithmetic_problems(cfg.warm_start.eval_prompts, data.seed + HELD_OUT_SEED_OFFSET, data.arithmetic)
    dataset = PromptDataset.from_records(records, prompt_cfg, tokenizer, source=prompt_cfg.paths[0])
    return Task(tokenizer, tokenizer_dir, dataset, held_out)


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
