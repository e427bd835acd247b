"""Exact-answer reward: the completion's final text, after its reasoning, is the reference string."""
from __future__ import annotations

from .answer_extraction import answer_after_think


def exact_reference(reference) -> str:
    """The reference answer, stripped; ValueError when it is missing or empty (no completion could match it)."""
    expected = str(reference).strip() if reference is not None else ""
    if not expected:
        raise ValueError(f"the answer {reference!r} is empty")
    return expected


def exact_answer(completion: str, reference) -> float:
    """1.0 when the text after the completion's last ``</think>`` (all of it when there is none), stripped, is
    the stripped reference, character for character (case and spacing inside count), else 0.0. A missing or
    empty reference is a data error (ValueError)."""
    expected = exact_reference(reference)
    if not isinstance(completion, str):
        return 0.0
    return 1.0 if answer_after_think(completion) == expected else 0.0
