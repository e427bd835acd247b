"""Score saved samples again, with no model: `r1-megatron eval --samples FILE`.

Each sample's text is scored by its benchmark's rewards in the reward runner's bounded worker processes (the
same path as during the evaluation), and its correctness, answer and failure are replaced by the new ones; a
sample whose scoring times out is wrong and counted, as in an evaluation.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Mapping, Sequence

from r1_megatron.rewards.runner import RewardConfig, RewardRunner

from .scorers import get_scorer

REQUIRED = ("benchmark", "question", "sample", "text", "finish_reason", "reference")


def check_records(records: Sequence[dict], source: str, *, header: bool) -> None:
    """ValueError naming the first sample that lacks a field re-scoring reads (`scorer` too without a header)."""
    required = REQUIRED if header else REQUIRED + ("scorer",)
    for number, r in enumerate(records, start=1):
        missing = [f for f in required if f not in r]
        if missing:
            raise ValueError(f"{source}: sample {number} ({_where(r)}): field {missing[0]!r}: missing")


def inferred_benchmarks(records: Sequence[dict]) -> dict[str, dict]:
    """Metric settings of a samples file without a header: each benchmark's scorer from its samples, k = n (its
    fewest samples per question), pass@1 and pass@n, cons@n, no format rate."""
    counts = collections.Counter((r["benchmark"], r["question"]) for r in records)
    out: dict[str, dict] = {}
    for r in records:
        out.setdefault(r["benchmark"], {"scorer": r["scorer"], "format": None})
    for name, settings in out.items():
        n = min(c for (b, _), c in counts.items() if b == name)
        settings.update(k=n, pass_ks=sorted({1, n}), cons_k=n)
    return out


def rescore_records(records: Sequence[dict], benchmarks: Mapping[str, Mapping], base: RewardConfig, *,
                    source: str) -> list[dict]:
    """The records with `rewards`, `correct`, `answer`, `failure` and `error` recomputed (order kept)."""
    for number, r in enumerate(records, start=1):
        if r["benchmark"] not in benchmarks:
            raise ValueError(f"{source}: sample {number}: benchmark {r['benchmark']!r} is not in the file's header")
    by_benchmark: dict[str, list[int]] = collections.defaultdict(list)
    for i, r in enumerate(records):
        by_benchmark[r["benchmark"]].append(i)
    out = [dict(r) for r in records]
    for name, indices in by_benchmark.items():
        _rescore(out, indices, benchmarks[name], base)
    return out


def _rescore(records: list[dict], indices: list[int], settings: Mapping, base: RewardConfig) -> None:
    scorer = get_scorer(settings["scorer"])
    weights = {scorer.reward: 1.0} | ({settings["format"]: 1.0} if settings.get("format") else {})
    texts = [records[i]["text"] for i in indices]
    samples = [{"answer": None, "tests": None, **(records[i]["reference"] or {}),
                "finish_reason": records[i]["finish_reason"]} for i in indices]
    with RewardRunner(dataclasses.replace(base, weights=weights, reward_kwargs={})) as runner:
        scored = runner.score(texts, samples)
    for j, i in enumerate(indices):
        r = records[i]
        r["rewards"] = {name: values[j] for name, values in scored.per_reward.items()}
        r["correct"] = r["rewards"][scorer.reward] >= scorer.correct_threshold
        r["answer"] = scorer.extract(r["text"], r["finish_reason"] == "stop")
        r["failure"] = scored.failure[j]
        r["error"] = scored.errors[j].splitlines()[0] if scored.errors and scored.errors[j] else None


def _where(record: dict) -> str:
    return ", ".join(f"{k} {record[k]!r}" for k in ("benchmark", "question", "sample") if k in record) or "no id"
