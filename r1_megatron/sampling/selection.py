"""Which of a prompt's drawn samples are kept: the reward test, R1's readability filters, de-duplication and the
per-prompt cap, in that order (docs/sampling.md).

    selector = Selector(cfg.keep, cfg.filters)
    decisions = selector.select(question, drawn)   # one Decision per drawn sample, in sample order
    tally = PromptTally.of(decisions)              # what the prompt's line in the ledger counts

A rejected sample is counted under its first failing filter (`rejected`); the per-sample filters (rewards,
language, long_paragraph, code_block) are all evaluated on every sample and counted under each that fails
(`failed`). De-duplication compares a sample with every sample kept so far, of any prompt, so the kept set
depends on the prompt order only, which is fixed (prompts are processed in file order).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Iterable, Sequence

from .config import CodeBlocks, FiltersConfig, KeepConfig
from .readability import (THINK_CLOSE, dedup_key, has_code_block, longest_paragraph_chars, reasoning_consistency,
                          split_reasoning)

FILTERS = ("rewards", "language", "long_paragraph", "code_block", "duplicate", "max_per_prompt")
PER_SAMPLE = FILTERS[:4]  # need only the sample itself, so every sample gets them all


@dataclasses.dataclass(frozen=True)
class Drawn:
    """One generated, scored sample of a prompt."""

    sample: int  # j of the prompt's k samples
    text: str  # the response, decoded without the EOS that ended it
    rewards: dict[str, float]  # the rewards that scored it (those of its prompt's kind)
    reward: float  # their weighted sum
    finish_reason: str
    failure: str | None = None  # the reward runner's "timeout", "crash" or "error"


@dataclasses.dataclass(frozen=True)
class Decision:
    drawn: Drawn
    reasoning: str
    summary: str
    filters: dict[str, dict[str, Any]]  # filter -> {"pass": bool, what it measured}, in FILTERS order
    rejected_by: str | None  # the first failing filter; None: kept

    @property
    def kept(self) -> bool:
        return self.rejected_by is None


def sample_checks(reasoning: str, rewards: dict[str, float], keep: KeepConfig, filters: FiltersConfig
                  ) -> dict[str, dict[str, Any]]:
    """The filters that look at one sample alone: each reward of keep.require that scored the sample (`rewards`
    holds those of its kind, rewards.kinds) at its minimum; the reasoning's
    language consistency, longest paragraph and code fences against their limits (a limit of null passes)."""
    low = [name for name, minimum in keep.require.items() if name in rewards and rewards[name] < minimum]
    consistency = reasoning_consistency(reasoning, filters.language.target)
    threshold = filters.language.min_consistency
    longest, limit = longest_paragraph_chars(reasoning), filters.max_paragraph_chars
    code = has_code_block(reasoning)
    return {"rewards": {"pass": not low, "below_minimum": low},
            "language": {"pass": threshold is None or consistency is None or consistency >= threshold,
                         "consistency": consistency},
            "long_paragraph": {"pass": limit is None or longest <= limit, "longest_chars": longest},
            "code_block": {"pass": not (code and filters.code_blocks is CodeBlocks.REJECT), "found": code}}


def response_key(question: str, reasoning: str, summary: str, mode: str) -> str | None:
    """The de-duplication key of a kept sample (rebuilt from a kept record's messages on resume)."""
    return dedup_key(question, f"{reasoning}{THINK_CLOSE}{summary}", mode)


class Selector:
    """Decides, prompt by prompt in order, which samples are kept; holds the de-dup keys of the kept ones."""

    def __init__(self, keep: KeepConfig, filters: FiltersConfig, kept: Iterable[tuple[str, str, str]] = ()):
        """kept: (question, reasoning, summary) of the samples kept before (a resumed run's file)."""
        self.keep, self.filters, self.mode = keep, filters, filters.dedup.value
        self.seen = {response_key(*k, self.mode) for k in kept}

    def select(self, question: str, drawn: Sequence[Drawn]) -> list[Decision]:
        decisions, kept = [], 0
        for d in drawn:
            reasoning, summary = split_reasoning(d.text)
            checks = sample_checks(reasoning, d.rewards, self.keep, self.filters)
            first = next((name for name in PER_SAMPLE if not checks[name]["pass"]), None)
            if first is None:
                key = response_key(question, reasoning, summary, self.mode)
                duplicate = key is not None and key in self.seen
                capped = not duplicate and self.keep.max_per_prompt is not None and kept >= self.keep.max_per_prompt
                checks["duplicate"] = {"pass": not duplicate}
                if not duplicate:
                    checks["max_per_prompt"] = {"pass": not capped}
                first = "duplicate" if duplicate else "max_per_prompt" if capped else None
                if first is None:
                    kept += 1
                    self.seen.add(key)
            decisions.append(Decision(d, reasoning, summary, checks, first))
        return decisions


@dataclasses.dataclass(frozen=True)
class PromptTally:
    """What one prompt's samples did: drawn, kept, rejected under their first failing filter, failing each
    filter, scoring failures."""

    drawn: int
    kept: int
    rejected: dict[str, int]
    failed: dict[str, int]
    scoring_failures: int

    @classmethod
    def of(cls, decisions: Sequence[Decision]) -> "PromptTally":
        rejected = collections.Counter(d.rejected_by for d in decisions if not d.kept)
        failed = collections.Counter(name for d in decisions for name, check in d.filters.items()
                                     if not check["pass"])
        return cls(len(decisions), sum(d.kept for d in decisions), dict(rejected), dict(failed),
                   sum(d.drawn.failure is not None for d in decisions))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def total(tallies: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The sum of prompts' tallies (their to_json form), every filter listed: {prompts, drawn, kept, rejected:
    {filter: n}, failed: {filter: n}, scoring_failures}."""
    out = {"prompts": 0, "drawn": 0, "kept": 0, "rejected": dict.fromkeys(FILTERS, 0),
           "failed": dict.fromkeys(FILTERS, 0), "scoring_failures": 0}
    for t in tallies:
        out["prompts"] += 1
        for name in ("drawn", "kept", "scoring_failures"):
            out[name] += t[name]
        for name in ("rejected", "failed"):
            for f, n in t[name].items():
                out[name][f] += n
    return out
