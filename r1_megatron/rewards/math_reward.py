"""Math accuracy reward: is the completion's final answer equivalent to the ground truth (math-verify)?"""
from __future__ import annotations

import functools
import logging
import math

from .answer_extraction import SEARCH_CHARS, extract_final_answer
from .deadline import RewardTimeout, cpu_deadline

# Longer "answers" are not answers; capping them bounds the parser's work and math-verify's log lines
# (it logs the whole input on a timeout).
MAX_ANSWER_CHARS = 2000


def _not_timeout_disabled_warning(record: logging.LogRecord) -> bool:
    return "Timeout is disabled" not in record.getMessage()


# math-verify warns once per process that its own alarm is disabled; we disable it on purpose (see below).
for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_not_timeout_disabled_warning)


@functools.lru_cache(maxsize=1)
def load_math_verify():
    """Import lazily: the package costs ~0.5 s (sympy) and workers pay it once, at start-up."""
    import math_verify

    return math_verify


@functools.lru_cache(maxsize=4096)
def _parse_gold(ground_truth: str):
    return parse_boxed(ground_truth)


def parse_boxed(answer: str):
    """math-verify's parse of ``answer`` as if it were boxed, the one parse every math comparison here uses."""
    mv = load_math_verify()
    # parsing_timeout=None: math-verify's own timeout is signal.alarm(int seconds), a wall clock that raises
    # in non-main threads; our CPU-time deadline (cpu_deadline) replaces it.
    config = [mv.LatexExtractionConfig(boxed_match_priority=0)]
    return mv.parse("\\boxed{" + answer + "}", extraction_config=config, parsing_timeout=None)


def check_reference(ground_truth: str, *, timeout_s: float = 3.0) -> None:
    """ValueError when math_accuracy cannot read ``ground_truth``: math-verify finds no expression in it (its
    only result is the raw-text fallback), so no completion can ever match it. The same gold parsing as
    math_accuracy, under the same soft deadline (CPU time)."""
    try:
        with cpu_deadline(timeout_s):
            gold = _parse_gold(str(ground_truth).strip())
    except RewardTimeout:
        raise ValueError(f"math-verify did not parse it within {timeout_s} s of CPU time") from None
    if not any(not isinstance(g, str) for g in gold):
        raise ValueError("math-verify finds no math expression in it")


def math_accuracy(completion: str, ground_truth: str, *, timeout_s: float = 3.0,
                  search_chars: int = SEARCH_CHARS) -> float:
    """1.0 when the completion's final answer is mathematically equivalent to ``ground_truth``, else 0.0.

    The final answer is the last ``\\boxed{...}`` (nested braces allowed), else the content of the last
    ``<answer>...</answer>``, else there is none (0.0), looked for in the last ``search_chars`` characters of the
    completion. Both the answer and the ground truth are parsed as LaTeX by math-verify and compared with
    ``math_verify.verify`` (numeric, symbolic, set/interval, matrix equivalence; units and ``\\text`` stripped
    where math-verify does). Never raises on model output: malformed text, unparsable LaTeX, or using more than
    ``timeout_s`` of CPU time on all of it (extraction, parsing, comparison: a soft, main-thread-only deadline;
    see ``deadline.py``) all score 0.0. MemoryError propagates: the reward worker exits on it, releasing the
    memory, and the runner counts the sample as a crash. Bad keyword values raise ValueError (configuration).
    """
    _check_bounds(timeout_s, search_chars)
    try:
        with cpu_deadline(timeout_s):
            answer = extract_final_answer(completion, search_chars=search_chars)
            if answer is None or len(answer) > MAX_ANSWER_CHARS:
                return 0.0
            gold = _parse_gold(str(ground_truth).strip())
            pred = parse_boxed(answer)
            if not gold or not pred:
                return 0.0
            ok = load_math_verify().verify(gold, pred, timeout_seconds=None)
        return 1.0 if ok else 0.0
    except MemoryError:
        raise
    except (Exception, RewardTimeout, RecursionError):
        return 0.0


def _check_bounds(timeout_s: float, search_chars: int) -> None:
    """Both bound math_accuracy's work: inf, 0 or a negative value would lift the bound, not set one."""
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"rewards.reward_kwargs.math_accuracy.timeout_s must be a finite number of seconds > 0, "
                         f"got {timeout_s!r}")
    if not (isinstance(search_chars, int) and search_chars > 0):
        raise ValueError(f"rewards.reward_kwargs.math_accuracy.search_chars must be a whole number > 0, "
                         f"got {search_chars!r}")
