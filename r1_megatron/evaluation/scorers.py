"""Scorers: how a benchmark's samples are judged. A scorer names the reward (rewards/registry.py) whose score
says whether a sample is correct, how the answer a sample commits to is extracted, and when two answers count as
the same for the majority vote (cons@k).

| scorer            | correct when                      | answer for the vote                      | equal       |
|-------------------|-----------------------------------|------------------------------------------|-------------|
| `math`            | `math_accuracy` = 1 (math-verify) | last `\\boxed{}`, else `<answer>` block  | math-verify |
| `multiple_choice` | `multiple_choice` = 1             | the letter A-Z                           | same letter |
| `code`            | `code_tests` = 1 (all tests pass) | none: no vote, no cons@k                 | -           |
| `exact`           | `exact_answer` = 1                | text after the last `</think>`, stripped | same string |
| `arithmetic`      | `arithmetic_exact` = 1            | the completion, when it stopped          | same string |
"""
from __future__ import annotations

import enum
import functools
import operator
import time
from dataclasses import dataclass
from typing import Callable

from r1_megatron.rewards.answer_extraction import answer_after_think, extract_final_answer
from r1_megatron.rewards.choice_reward import extract_choice_letter
from r1_megatron.rewards.deadline import RewardTimeout, cpu_deadline
from r1_megatron.rewards.math_reward import MAX_ANSWER_CHARS, load_math_verify, parse_boxed

MATH_EQUAL_TIMEOUT_S = 3.0  # math_accuracy's default: a comparison that takes longer counts as "not equal"


class ScorerName(str, enum.Enum):
    MATH = "math"
    MULTIPLE_CHOICE = "multiple_choice"
    CODE = "code"
    EXACT = "exact"
    ARITHMETIC = "arithmetic"


@dataclass(frozen=True)
class Scorer:
    name: ScorerName
    reward: str  # rewards/registry.py name that gives correctness (1.0 = correct)
    extract: Callable[[str, bool], str | None]  # (completion text, stopped) -> the answer it commits to
    equal: Callable[[str, str], bool] | None  # answers equal for the vote; None: no majority vote
    correct_threshold: float = 1.0  # reward >= this counts as correct (code: all tests pass)


@functools.lru_cache(maxsize=4096)
def _parsed(answer: str):
    return parse_boxed(answer)


@functools.lru_cache(maxsize=16384)
def math_answers_equal(a: str, b: str) -> bool:
    """Whether two extracted math answers are the same for the vote: identical strings, or math-verify's
    ``verify(parse(\\boxed{a}), parse(\\boxed{b}))`` with math_accuracy's parsing (so ``\\frac{1}{2}`` equals
    ``0.5``). An answer longer than ``MAX_ANSWER_CHARS``, an exception, or running past
    ``MATH_EQUAL_TIMEOUT_S`` of CPU time (``cpu_deadline``: main thread only) gives False. Cached per (a, b) pair, since a
    vote compares the same answers many times."""
    if a == b:
        return True
    if len(a) > MAX_ANSWER_CHARS or len(b) > MAX_ANSWER_CHARS:
        return False
    math_verify = load_math_verify()  # outside the deadline: an import cut short would stay broken
    try:
        with cpu_deadline(MATH_EQUAL_TIMEOUT_S):
            gold, pred = _parsed(a), _parsed(b)
            return bool(gold and pred and math_verify.verify(gold, pred, timeout_seconds=None))
    except (Exception, RewardTimeout, RecursionError):
        return False


def _math_answer(text: str, stopped: bool) -> str | None:
    answer = extract_final_answer(text)
    return answer if answer is not None and len(answer) <= MAX_ANSWER_CHARS else None


def _choice_answer(text: str, stopped: bool) -> str | None:
    return extract_choice_letter(text)


def _no_answer(text: str, stopped: bool) -> None:
    return None


def _exact_answer(text: str, stopped: bool) -> str | None:
    return answer_after_think(text)


def _arithmetic_answer(text: str, stopped: bool) -> str | None:
    return text if stopped else None


_SCORERS = {s.name: s for s in (
    Scorer(ScorerName.MATH, "math_accuracy", _math_answer, math_answers_equal),
    Scorer(ScorerName.MULTIPLE_CHOICE, "multiple_choice", _choice_answer, operator.eq),
    Scorer(ScorerName.CODE, "code_tests", _no_answer, None),
    Scorer(ScorerName.EXACT, "exact_answer", _exact_answer, operator.eq),
    Scorer(ScorerName.ARITHMETIC, "arithmetic_exact", _arithmetic_answer, operator.eq),
)}


class BoundedEqual:
    """An answer equality with a total time budget, for the votes of one benchmark: ``equal`` runs until its calls
    have taken ``budget_s`` seconds in all, then answers are compared as strings and each such comparison is
    counted in ``fallbacks``.

    The votes run in this process, not in the reward workers, and model output can make math-verify slow (each
    call stops at MATH_EQUAL_TIMEOUT_S, but 64 distinct answers are up to 2,016 pairs). Normal comparisons take
    milliseconds, so a budget of seconds per question is never reached by real answers; a benchmark whose
    fallbacks are not 0 says so in its results."""

    def __init__(self, equal: Callable[[str, str], bool], budget_s: float, clock: Callable[[], float] = time.monotonic):
        self.equal, self.budget_s, self.clock = equal, budget_s, clock
        self.spent, self.fallbacks = 0.0, 0

    def __call__(self, a: str, b: str) -> bool:
        if self.spent >= self.budget_s:
            self.fallbacks += 1
            return a == b
        started = self.clock()
        try:
            return self.equal(a, b)
        finally:
            self.spent += self.clock() - started


def get_scorer(name: str | ScorerName) -> Scorer:
    """The scorer called ``name``; ValueError naming the known scorers otherwise."""
    try:
        return _SCORERS[ScorerName(name)]
    except ValueError:
        known = ", ".join(s.value for s in ScorerName)
        raise ValueError(f"unknown scorer {str(name)!r}; known: {known}") from None


def scorer_for_reward(reward: str) -> Scorer | None:
    """The scorer whose correctness reward is ``reward`` (in GRPO: the run's accuracy reward), else None."""
    return next((s for s in _SCORERS.values() if s.reward == reward), None)
