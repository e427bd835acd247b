"""Reference answers as datasets write them, reduced to the final answer that rewards compare against.

GSM8K writes a worked solution followed by ``#### 72``; MATH writes a solution whose answer is the last
``\\boxed{...}``; most curated sets write the bare answer. math_accuracy parses the reference as the content of
one ``\\boxed{}``, so a whole GSM8K solution given as the reference never matches anything and the run trains on
zero reward without an error. ``reference_answer`` is applied once, when the dataset is built.
"""
from __future__ import annotations

import enum
import re

from r1_megatron.rewards.answer_extraction import last_boxed

GSM8K_MARKER = "####"
# a comma between digits that is followed by exactly three digits: "1,000,000" -> "1000000", "(1,2)" stays
_THOUSANDS_SEPARATOR = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


class AnswerFormat(str, enum.Enum):
    """How the answer field holds the final answer. AUTO decides per record: GSM8K when it has ``####``, BOXED
    when it has a closed ``\\boxed{}``, else RAW."""

    AUTO = "auto"
    GSM8K = "gsm8k"  # the text after the last "####", thousands separators removed
    BOXED = "boxed"  # the content of the last \boxed{...} (or \fbox{...})
    RAW = "raw"  # the field as it is


class UnreadableAnswer(ValueError):
    """The answer is not in the chosen format (the message says what is missing)."""


def resolve_answer_format(text: str, fmt: AnswerFormat) -> AnswerFormat:
    """The concrete format of one answer: ``fmt`` itself, or for AUTO what the text looks like."""
    if fmt is not AnswerFormat.AUTO:
        return fmt
    if GSM8K_MARKER in text:
        return AnswerFormat.GSM8K
    if last_boxed(text) is not None:
        return AnswerFormat.BOXED
    return AnswerFormat.RAW


def reference_answer(text: str, fmt: AnswerFormat) -> str:
    """The final answer held by ``text`` in format ``fmt``; UnreadableAnswer when it holds none."""
    fmt = resolve_answer_format(text, AnswerFormat(fmt))
    if fmt is AnswerFormat.GSM8K:
        _, marker, tail = text.rpartition(GSM8K_MARKER)
        if not marker:
            raise UnreadableAnswer(f"no '{GSM8K_MARKER}' before the final answer (GSM8K format)")
        answer = _THOUSANDS_SEPARATOR.sub("", tail.strip())
        if not answer:
            raise UnreadableAnswer(f"nothing after the last '{GSM8K_MARKER}' (GSM8K format)")
        return answer
    if fmt is AnswerFormat.BOXED:
        answer = last_boxed(text)
        if answer is None or not answer.strip():
            raise UnreadableAnswer("no closed, non-empty \\boxed{...} (boxed format)")
        return answer.strip()
    return text
