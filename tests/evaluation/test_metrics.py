"""pass@k, pass@1, majority vote and benchmark_metrics on hand-worked values and independent brute force."""
import itertools
import math
import operator
from fractions import Fraction

import pytest

from r1_megatron.evaluation.metrics import (
    QuestionSamples, Vote, benchmark_metrics, majority_vote, pass_at_1, pass_at_k)


def _brute_pass_at_k(n, c, k):
    """The share of all k-subsets of n samples (the first c correct) holding a correct one, exactly."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n,c,k,expected", [
    (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (10, 3, 1, 0.3),  # pass@1 = c/n
    (3, 1, 3, 1.0),  # n - c < k: every 3-subset is all three samples
    (6, 0, 3, 0.0),
    (6, 6, 1, 1.0),
    (8, 2, 4, 1 - 15 / 70),  # C(6,4)/C(8,4)
])
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=0)


def test_pass_at_k_matches_brute_force_over_all_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(_brute_pass_at_k(n, c, k)), rel=1e-12, abs=1e-15)


def test_pass_at_k_is_accurate_for_thousands_of_samples():
    for n, c, k in [(2000, 1, 1), (2000, 3, 10), (3000, 1500, 64), (5000, 2, 4999), (1024, 1, 512)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("n,c,k", [(4, 1, 0), (4, 1, 5), (4, 5, 2), (4, -1, 2), (0, 0, 1)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError, match=f"n={n}, c={c}, k={k}"):
        pass_at_k(n, c, k)


def test_pass_at_1_is_the_mean():
    assert pass_at_1([True, False, False, True]) == 0.5
    assert pass_at_1((False,) * 3 + (True,)) == 0.25
    assert pass_at_1([True]) == 1.0
    with pytest.raises(ValueError):
        pass_at_1([])


def test_vote_most_votes_wins_and_counts_classes():
    vote = majority_vote(["3", "4", "4", "5", "4"], [True, False, False, False, False], operator.eq)
    assert vote == Vote(answer="4", correct=False, votes=3, classes=3)


@pytest.mark.parametrize("answers,winner", [
    (["a", "b", "b", "a"], "a"),  # a's first member (sample 0) came before b's (sample 1)
    (["b", "a", "a", "b"], "b"),
    (["x", "b", "a", "a", "b"], "b"),  # b, a tie with 2 votes; b appeared first at sample 1
])
def test_vote_tie_goes_to_the_class_that_appeared_first(answers, winner):
    correct = [a == "a" for a in answers]
    vote = majority_vote(answers, correct, operator.eq)
    assert (vote.answer, vote.votes, vote.correct) == (winner, 2, winner == "a")


def test_vote_none_answers_do_not_vote():
    vote = majority_vote([None, None, "7", None], [False, False, True, False], operator.eq)
    assert vote == Vote(answer="7", correct=True, votes=1, classes=1)
    # three Nones would outvote "7"'s two if they counted as one class
    vote = majority_vote([None, "7", None, "7", None], [False, True, False, True, False], operator.eq)
    assert (vote.answer, vote.votes, vote.classes) == ("7", 2, 1)
    assert majority_vote([None, None], [True, True], operator.eq) == Vote(None, False, 0, 0)
    assert majority_vote([], [], operator.eq) == Vote(None, False, 0, 0)


def test_vote_correctness_is_the_representatives():
    # the winning class's first member was judged wrong, a later one right: the vote is wrong (and vice versa)
    assert not majority_vote(["A", "A"], [False, True], operator.eq).correct
    assert majority_vote(["A", "A"], [True, False], operator.eq).correct


def test_vote_compares_against_each_class_representative_in_order():
    calls = []

    def equal(rep, answer):
        calls.append((rep, answer))
        return abs(int(rep) - int(answer)) <= 1  # not transitive: 2 joins 1's class, 3 is compared to 1 only

    vote = majority_vote(["1", "2", "3", "3"], [False, False, True, True], equal)
    assert calls == [("1", "2"), ("1", "3"), ("1", "3"), ("3", "3")]
    assert vote == Vote(answer="1", correct=False, votes=2, classes=2)  # 2 vs 2 votes: 1 came first


def test_vote_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 answers but 1"):
        majority_vote(["a", "b"], [True], operator.eq)


def _q(correct, answers=None):
    return QuestionSamples(correct=tuple(correct), answers=tuple(answers if answers is not None else [None] * len(correct)))


def test_benchmark_metrics_over_questions_with_different_n():
    questions = [
        _q([True, False, False, False], ["1", "2", "2", "3"]),  # pass@1 1/4, pass@2 1/2
        _q([True, True, False, False, False], ["5", "5", "6", None, "7"]),  # pass@1 2/5, pass@2 0.7
        _q([False, False], [None, None]),  # pass@1 0, pass@2 0
    ]
    metrics = benchmark_metrics(questions, pass_ks=[2], cons_k=2, equal=operator.eq)
    assert list(metrics) == ["pass@1", "pass@2", "cons@2"]
    assert metrics["pass@1"] == pytest.approx((1 / 4 + 2 / 5 + 0) / 3)
    assert metrics["pass@2"] == pytest.approx((0.5 + 0.7 + 0) / 3)
    # cons@2 votes over the first two samples: ("1", "2") -> "1" (tie, first) right; ("5", "5") right; none
    assert metrics["cons@2"] == pytest.approx(2 / 3)
    full = benchmark_metrics(questions, pass_ks=[1, 2], cons_k=None, equal=operator.eq)
    assert full == {"pass@1": metrics["pass@1"], "pass@2": metrics["pass@2"]}


def test_benchmark_metrics_cons_uses_the_first_k_samples():
    questions = [_q([False, True, True, True], ["9", "4", "4", "4"])]
    assert benchmark_metrics(questions, pass_ks=[], cons_k=1, equal=operator.eq)["cons@1"] == 0.0
    assert benchmark_metrics(questions, pass_ks=[], cons_k=4, equal=operator.eq)["cons@4"] == 1.0


def test_benchmark_metrics_without_equality_has_no_vote():
    metrics = benchmark_metrics([_q([True, False])], pass_ks=[2], cons_k=2, equal=None)
    assert metrics == {"pass@1": 0.5, "pass@2": 1.0}


def test_benchmark_metrics_rejects_k_above_n():
    questions = [_q([True] * 8), _q([True] * 4)]
    with pytest.raises(ValueError, match="pass@8 needs K=8 .* question 1 has n=4"):
        benchmark_metrics(questions, pass_ks=[8], cons_k=None, equal=None)
    with pytest.raises(ValueError, match="cons@8 needs K=8 .* question 1 has n=4"):
        benchmark_metrics(questions, pass_ks=[4], cons_k=8, equal=operator.eq)
    with pytest.raises(ValueError, match="at least one question"):
        benchmark_metrics([], pass_ks=[1], cons_k=None, equal=None)


def test_question_samples_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 correctness flags but 1 answers"):
        QuestionSamples(correct=(True, False), answers=("a",))
