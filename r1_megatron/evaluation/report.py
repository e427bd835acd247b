"""Results of an evaluation from its samples: the numbers of results.json and the markdown table printed at the end.

Everything is computed from the sample records (sample_store.py), so an evaluation that ran in one go, one that
was killed and resumed, and `r1-megatron eval --samples` on its samples file give the same numbers.
"""
from __future__ import annotations

import collections
from typing import Any, Mapping, Sequence

from .metrics import QuestionSamples, benchmark_metrics
from .scorers import BoundedEqual, get_scorer

FAILURE_KINDS = {"timeout": "timeouts", "crash": "crashes", "error": "errors"}
VOTE_BUDGET_S = 5.0  # seconds of answer comparisons per question for the votes (scorers.BoundedEqual)


def questions_of(records: Sequence[Mapping[str, Any]]) -> list[QuestionSamples]:
    """Each question's samples, in question then sample order."""
    by_question: dict[int, list] = collections.defaultdict(list)
    for r in records:
        by_question[r["question"]].append(r)
    out = []
    for index in sorted(by_question):
        samples = sorted(by_question[index], key=lambda r: r["sample"])
        out.append(QuestionSamples(tuple(bool(r["correct"]) for r in samples), tuple(r["answer"] for r in samples)))
    return out


def benchmark_results(settings: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One benchmark's numbers. settings: its header entry (scorer, pass_ks, cons_k, format); records: its
    samples. pass@1 = mean over questions of the mean correctness of their samples (R1's pass@1); pass@K by the
    unbiased estimator; cons@K by majority vote over the first K samples (metrics.py); response lengths in
    generated tokens; truncated: stopped at the length limit; failures: samples whose scoring timed out,
    crashed or raised (each scored wrong); vote_fallbacks: answer comparisons of the votes made as plain strings
    because the benchmark's comparisons ran past VOTE_BUDGET_S per question (0 unless answers are adversarial)."""
    scorer = get_scorer(settings["scorer"])
    questions = questions_of(records)
    out: dict[str, Any] = {"questions": len(questions), "samples": len(records),
                           "k": max((len(q.correct) for q in questions), default=0)}
    if not questions:
        return out
    cons_k = settings.get("cons_k") if scorer.equal is not None else None
    equal = BoundedEqual(scorer.equal, VOTE_BUDGET_S * len(questions)) if cons_k else None
    out.update(benchmark_metrics(questions, pass_ks=settings.get("pass_ks") or (1,), cons_k=cons_k, equal=equal))
    if equal is not None:
        out["vote_fallbacks"] = equal.fallbacks  # comparisons made as strings once the vote's time ran out
    lengths = [len(r["token_ids"]) for r in records]
    out["response_length/mean"] = sum(lengths) / len(lengths)
    out["response_length/max"] = max(lengths)
    out["truncated_frac"] = sum(r["finish_reason"] == "length" for r in records) / len(records)
    if settings.get("format"):
        out["format_rate"] = sum(r["rewards"].get(settings["format"], 0.0) >= 1.0 for r in records) / len(records)
    failures = collections.Counter(r["failure"] for r in records)
    out["failures"] = {name: failures[kind] for kind, name in FAILURE_KINDS.items()}
    return out


def all_results(benchmarks: Mapping[str, Mapping[str, Any]], records: Sequence[Mapping[str, Any]]
                ) -> dict[str, dict[str, Any]]:
    """benchmark name -> benchmark_results, for each benchmark of the header, in its order."""
    grouped: dict[str, list] = collections.defaultdict(list)
    for r in records:
        grouped[r["benchmark"]].append(r)
    return {name: benchmark_results(settings, grouped[name]) for name, settings in benchmarks.items()}


def _metric_columns(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    keys = {key for r in results.values() for key in r if key.startswith(("pass@", "cons@"))}
    return sorted(keys, key=lambda key: (key.startswith("cons@"), int(key.split("@")[1])))


def markdown_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """| benchmark | questions | k | pass@1 | ... | cons@K | mean len | truncated | format | failures |, scores in %."""
    metrics = _metric_columns(results)
    head = ["benchmark", "questions", "k", *metrics, "mean len", "max len", "truncated", "format", "failures"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name, r in results.items():
        cells = [name, str(r["questions"]), str(r["k"])]
        cells += [_percent(r.get(m)) for m in metrics]
        cells += [_number(r.get("response_length/mean")), _number(r.get("response_length/max")),
                  _percent(r.get("truncated_frac")), _percent(r.get("format_rate")),
                  str(sum(r.get("failures", {}).values()))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _number(value) -> str:
    return "-" if value is None else f"{value:.0f}" if isinstance(value, int) else f"{value:.1f}"
