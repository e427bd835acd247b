"""Prompt templates: the R1-Zero text template (byte-exact v1), a tokenizer's chat template, or the raw question."""
from __future__ import annotations

import enum

from r1_megatron.tokenizer import Tokenizer

# DeepSeek-R1 paper (v1), Table 1; "prompt" is replaced by the question. Byte for byte, including the single
# spaces around "User:" and the trailing "Assistant:" without a space after it.
R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: {question}. Assistant:"
)


class PromptTemplate(str, enum.Enum):
    R1_ZERO = "r1_zero"  # R1_ZERO_TEMPLATE
    CHAT = "chat"  # the tokenizer's chat template, the question as one user message, generation prompt added
    RAW = "raw"  # the question unchanged (synthetic tasks)


def render_r1_zero(question: str) -> str:
    return R1_ZERO_TEMPLATE.replace("{question}", question)


def render_prompt(template: PromptTemplate, question: str, tokenizer: Tokenizer | None = None) -> str:
    if template is PromptTemplate.R1_ZERO:
        return render_r1_zero(question)
    if template is PromptTemplate.RAW:
        return question
    if tokenizer is None:
        raise ValueError("the chat template needs a tokenizer")
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
