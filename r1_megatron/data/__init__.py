"""Prompt data: local JSONL/Parquet prompt sets, the R1-Zero template, and the synthetic arithmetic task."""
from .prompt_dataset import PromptDataConfig, PromptDataset, PromptSample
from .records import DataError, read_records
from .synthetic import (ArithmeticConfig, arithmetic_problems, arithmetic_reward, arithmetic_reward_for_sample,
                        build_arithmetic_tokenizer)
from .templates import R1_ZERO_TEMPLATE, PromptTemplate, render_prompt, render_r1_zero

__all__ = [
    "PromptDataConfig", "PromptDataset", "PromptSample", "DataError", "read_records", "ArithmeticConfig",
    "arithmetic_problems", "arithmetic_reward", "arithmetic_reward_for_sample", "build_arithmetic_tokenizer",
    "R1_ZERO_TEMPLATE", "PromptTemplate", "render_prompt", "render_r1_zero",
]
