"""Start-up check of a dataset's reference data against the rewards that will score it.

A reference a reward cannot read (a whole worked solution where math_accuracy expects a final answer, tests in
a format code_tests does not know) scores 0 for every completion, silently: the run trains on no signal. Each
reward's registered ``check`` (registry.py) is run over an evenly spaced sample of at most ``limit`` prompts,
within a wall-time budget, so the cost stays well under a second for typical data.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Sequence

from .registry import reward_check, reward_needs


@dataclasses.dataclass(frozen=True)
class ReferenceCheck:
    """How many of the checked samples a reward cannot score, and the first of them."""

    reward: str
    checked: int
    failed: int
    first_source: str | None = None  # "file:line"
    first_field: str | None = None
    first_value: Any = None
    first_problem: str | None = None

    @property
    def failed_fraction(self) -> float:
        return self.failed / self.checked if self.checked else 0.0


def evenly_spaced(items: Sequence, limit: int) -> list:
    """At most ``limit`` items spread over the whole sequence (files are often sorted by source or difficulty)."""
    if len(items) <= limit:
        return list(items)
    return [items[i * len(items) // limit] for i in range(limit)]


def check_references(rewards: Sequence[str], samples: Sequence[tuple[str, Mapping[str, Any]]], *, limit: int = 500,
                     budget_s: float = 5.0) -> list[ReferenceCheck]:
    """One ReferenceCheck per reward in ``rewards`` that registered a check, over (source, sample) pairs."""
    picked = evenly_spaced(samples, limit)
    checks = [(name, check) for name in rewards if (check := reward_check(name)) is not None]
    return [_check_one(name, check, picked, time.monotonic() + budget_s / len(checks)) for name, check in checks]


def _check_one(name: str, check, samples, deadline: float) -> ReferenceCheck:
    checked, failed, first = 0, 0, None
    for source, sample in samples:
        if time.monotonic() > deadline:
            break
        checked += 1
        try:
            check(sample)
        except (ValueError, KeyError, TypeError) as e:  # what a check raises for data it cannot use
            failed += 1
            first = first or (source, sample, str(e) or type(e).__name__)
    if first is None:
        return ReferenceCheck(name, checked, 0)
    source, sample, problem = first
    field = next(iter(reward_needs(name)), None)
    return ReferenceCheck(name, checked, failed, source, field, sample.get(field) if field else None, problem)
