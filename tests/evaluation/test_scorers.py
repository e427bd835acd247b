"""The scorer registry: names, rewards, answer extraction, and math-verify answer equality for the vote."""
import operator
import time

import pytest

from r1_megatron.evaluation import scorers
from r1_megatron.evaluation.metrics import majority_vote
from r1_megatron.evaluation.scorers import ScorerName, get_scorer, math_answers_equal, scorer_for_reward
from r1_megatron.rewards.math_reward import MAX_ANSWER_CHARS
from r1_megatron.rewards.registry import get_reward, reward_needs


def test_get_scorer_by_name_and_enum():
    for name in ScorerName:
        assert get_scorer(name) is get_scorer(name.value)
        assert get_scorer(name).name is name
    with pytest.raises(ValueError, match=r"^unknown scorer 'mcq'; known: math, multiple_choice, code, exact, "
                                         r"arithmetic$"):
        get_scorer("mcq")


def test_scorer_for_reward_inverts_the_reward():
    assert {n: get_scorer(n).reward for n in ScorerName} == {
        ScorerName.MATH: "math_accuracy", ScorerName.MULTIPLE_CHOICE: "multiple_choice",
        ScorerName.CODE: "code_tests", ScorerName.EXACT: "exact_answer", ScorerName.ARITHMETIC: "arithmetic_exact"}
    for name in ScorerName:
        assert scorer_for_reward(get_scorer(name).reward) is get_scorer(name)
    assert scorer_for_reward("format") is None


# scorer -> (completion, stopped, reference, the answer extracted from it); the completion is correct
CORRECT = {
    ScorerName.MATH: ("<think>half</think> so \\boxed{\\frac{1}{2}}", True, "0.5", "\\frac{1}{2}"),
    ScorerName.MULTIPLE_CHOICE: ("Checking each option... The answer is (C).", True, "C", "C"),
    ScorerName.EXACT: ("<think>paris?</think>\n Paris \n", True, "Paris", "Paris"),
    ScorerName.ARITHMETIC: ("42", True, "42", "42"),
}


@pytest.mark.parametrize("name", list(CORRECT))
def test_each_scorer_reward_and_extraction_agree_on_a_correct_completion(name):
    completion, stopped, reference, answer = CORRECT[name]
    scorer = get_scorer(name)
    assert reward_needs(scorer.reward) == ("answer",)
    sample = {"answer": reference, "tests": None, "finish_reason": "stop" if stopped else "length"}
    assert get_reward(scorer.reward)(completion, sample) >= scorer.correct_threshold
    assert scorer.extract(completion, stopped) == answer
    assert scorer.equal(answer, reference)


def test_extraction_edge_cases():
    math, exact, arith, code = (get_scorer(n) for n in ("math", "exact", "arithmetic", "code"))
    assert math.extract("no box here", True) is None
    assert math.extract("\\boxed{" + "1" * (MAX_ANSWER_CHARS + 1) + "}", True) is None  # math_accuracy scores 0
    assert math.extract("<answer> 7 </answer>", False) == "7"  # a truncated response keeps its answer
    assert exact.extract("<think>x</think>   ", True) is None
    assert exact.extract("no think block", True) == "no think block"
    assert arith.extract("42", False) is None and arith.extract("42", True) == "42"
    assert code.extract("```python\nprint(1)\n```", True) is None and code.equal is None
    assert get_scorer("code").correct_threshold == 1.0


@pytest.mark.parametrize("a,b,expected", [
    ("\\frac{1}{2}", "0.5", True),
    ("0.5", "\\frac{1}{2}", True),
    ("1/2", "\\frac12", True),
    ("2", "3", False),
    ("x+1", "1+x", True),
    ("1/3", "0.5", False),
    ("not math", "not math", True),  # identical strings agree without math-verify
])
def test_math_answers_equal(a, b, expected):
    assert math_answers_equal(a, b) is expected


def test_math_equal_bounds_length_timeout_and_errors(monkeypatch):
    long = "1" * (MAX_ANSWER_CHARS + 1)
    assert not math_answers_equal(long, long[:-1] + "2")

    def slow(answer):
        while True:  # CPU-bound, as sympy is: the CPU-time deadline's signal interrupts it
            pass

    monkeypatch.setattr(scorers, "MATH_EQUAL_TIMEOUT_S", 0.2)
    monkeypatch.setattr(scorers, "_parsed", slow)
    start = time.monotonic()
    assert not math_answers_equal("timeout-a", "timeout-b")
    assert time.monotonic() - start < 5

    def broken(answer):
        raise RuntimeError("parser bug")

    monkeypatch.setattr(scorers, "_parsed", broken)
    assert not math_answers_equal("error-a", "error-b")


def test_math_equal_is_cached_per_pair():
    math_answers_equal("\\frac{3}{4}", "0.75")
    hits = math_answers_equal.cache_info().hits
    assert math_answers_equal("\\frac{3}{4}", "0.75") is True
    assert math_answers_equal.cache_info().hits == hits + 1


def test_math_equality_collapses_forms_into_a_winning_class():
    answers = ["1/3", "1/3", "0.5", "\\frac{1}{2}", "1/2"]
    correct = [False, False, True, True, True]
    by_string = majority_vote(answers, correct, operator.eq)
    assert (by_string.answer, by_string.votes, by_string.classes, by_string.correct) == ("1/3", 2, 4, False)
    by_math = majority_vote(answers, correct, get_scorer("math").equal)
    assert (by_math.answer, by_math.votes, by_math.classes, by_math.correct) == ("0.5", 3, 2, True)


def test_the_votes_answer_comparisons_are_bounded_in_total_time():
    """BoundedEqual runs the real equality until the calls have taken the budget (a fake clock: 1 s per call),
    then compares strings and counts each such comparison; a vote therefore ends whatever the answers cost."""
    from r1_megatron.evaluation.metrics import majority_vote
    from r1_megatron.evaluation.scorers import BoundedEqual

    ticks = iter(range(1000))
    calls = []

    def slow_equal(a, b):
        calls.append((a, b))
        return True  # everything "equal": only the real equality would merge "x" and "y"

    equal = BoundedEqual(slow_equal, budget_s=2.0, clock=lambda: float(next(ticks)))
    vote = majority_vote(["a", "b", "c", "d", "d"], [True, False, False, False, False], equal)
    assert len(calls) == 2 and equal.fallbacks > 0  # "b" and "c" merged into "a"; then strings: "d" != "a"
    assert vote.answer == "a" and vote.votes == 3 and vote.correct
