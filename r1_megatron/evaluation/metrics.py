"""Evaluation metrics over k sampled responses per question: pass@1, unbiased pass@k, cons@k (majority vote).

Pure functions of per-sample correctness and extracted answers; nothing here generates or scores text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): the chance that k of the n samples, drawn without replacement, hold at
    least one of the c correct ones.

        pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i)

    The product form never builds the huge binomials, so it stays accurate (relative error ~1e-15 per factor)
    for n in the thousands. Exact cases: c = 0 gives 0.0, n - c < k (every k-subset holds a correct sample)
    gives 1.0. ValueError unless 1 <= k <= n and 0 <= c <= n.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if c == 0:
        return 0.0
    if n - c < k:
        return 1.0
    none_correct = 1.0
    for i in range(n - c + 1, n + 1):
        none_correct *= 1.0 - k / i
    return 1.0 - none_correct


def pass_at_1(correct: Sequence[bool]) -> float:
    """R1's pass@1: the mean correctness of one question's samples, sum(correct) / len(correct).
    ValueError for no samples."""
    if not correct:
        raise ValueError("pass_at_1 needs at least one sample")
    return sum(bool(x) for x in correct) / len(correct)


@dataclass(frozen=True)
class Vote:
    answer: str | None  # the winning answer (its class representative), None when no sample has an answer
    correct: bool  # whether the vote is correct
    votes: int  # samples in the winning class
    classes: int  # distinct answer classes


def majority_vote(answers: Sequence[str | None], correct: Sequence[bool],
                  equal: Callable[[str, str], bool]) -> Vote:
    """Majority vote (R1's cons@k) over one question's samples, ``answers[i]`` and ``correct[i]`` per sample.

    Rules: a sample with no answer (None) does not vote. Answers are grouped greedily in sample order: each
    joins the first existing class whose representative (its first member) it equals,
    ``equal(representative, answer)``, else it starts a new class. The class with most votes wins; a tie goes to
    the class whose first member came first (lowest sample index). The vote is correct iff the winning class's
    representative sample was judged correct. No answer at all: ``Vote(None, False, 0, 0)``.
    Cost: at most len(answers) x classes calls of ``equal``. ValueError when the two lengths differ.
    """
    if len(answers) != len(correct):
        raise ValueError(f"majority_vote: {len(answers)} answers but {len(correct)} correctness flags")
    representatives: list[int] = []  # sample index of each class's first member, in order of appearance
    votes: list[int] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for cls, rep in enumerate(representatives):
            if equal(answers[rep], answer):
                votes[cls] += 1
                break
        else:
            representatives.append(i)
            votes.append(1)
    if not representatives:
        return Vote(answer=None, correct=False, votes=0, classes=0)
    # max keeps the first of equal maxima, and classes are in order of their first member: the tie rule
    winner = max(range(len(votes)), key=votes.__getitem__)
    rep = representatives[winner]
    return Vote(answer=answers[rep], correct=bool(correct[rep]), votes=votes[winner], classes=len(votes))


@dataclass(frozen=True)
class QuestionSamples:
    correct: tuple[bool, ...]  # per sample, in sample order
    answers: tuple[str | None, ...]  # extracted answer per sample (None: none)

    def __post_init__(self):
        if len(self.correct) != len(self.answers):
            raise ValueError(f"QuestionSamples: {len(self.correct)} correctness flags but {len(self.answers)} answers")


def benchmark_metrics(questions: Sequence[QuestionSamples], *, pass_ks: Sequence[int], cons_k: int | None,
                      equal: Callable[[str, str], bool] | None) -> dict[str, float]:
    """One benchmark's metrics, each a mean over its questions (a question may have its own sample count n):

        "pass@1": mean of pass_at_1(q.correct)
        "pass@K": mean of pass_at_k(n_q, c_q, K) for each K in pass_ks (K = 1 is "pass@1", the same value)
        "cons@K": mean of majority_vote(first K answers, first K correct, equal).correct, K = cons_k; only when
                  cons_k and equal are both given (a scorer without answer equality has no vote)

    ValueError for no questions, or a question with fewer samples than a K (naming K, the question index and n).
    """
    if not questions:
        raise ValueError("benchmark_metrics needs at least one question")
    metrics = {"pass@1": _mean(pass_at_1(q.correct) for q in questions)}
    for k in pass_ks:
        _check_enough_samples(questions, k, f"pass@{k}")
        if k == 1:  # pass_at_k(n, c, 1) = c/n is pass@1 already; one formula keeps one value
            continue
        metrics[f"pass@{k}"] = _mean(pass_at_k(len(q.correct), sum(map(bool, q.correct)), k) for q in questions)
    if cons_k is not None and equal is not None:
        _check_enough_samples(questions, cons_k, f"cons@{cons_k}")
        metrics[f"cons@{cons_k}"] = _mean(
            float(majority_vote(q.answers[:cons_k], q.correct[:cons_k], equal).correct) for q in questions)
    return metrics


def _check_enough_samples(questions: Sequence[QuestionSamples], k: int, metric: str) -> None:
    if k < 1:
        raise ValueError(f"{metric}: K={k} must be >= 1")
    for index, q in enumerate(questions):
        if len(q.correct) < k:
            raise ValueError(f"{metric} needs K={k} samples per question; question {index} has n={len(q.correct)}")


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
