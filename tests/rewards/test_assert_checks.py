"""Assert tests split into sandbox probes and checks decided here: the verdicts equal Python's own for trusted
programs, expected values never reach the sandbox, and the checks stay bounded on hostile reported values."""
import time

import pytest

from r1_megatron.rewards import code_tests
from r1_megatron.rewards.assert_checks import checks_pass, plan_asserts

PROGRAM = """
import math
def f(x):
    return x * x
def pair(x):
    return (x, -x)
def words(s):
    return sorted(s.split())
def maybe(x):
    return None if x < 0 else x
def boom():
    raise ValueError("no")
class Solution:
    def add(self, a, b):
        return a + b
"""

ASSERTS = [
    "assert f(3) == 9", "assert f(3) == 10", "assert f(3) != 10", "assert 0 < f(2) <= 4", "assert 0 < f(3) <= 4",
    "assert pair(2) == (2, -2)", "assert pair(2) == [2, -2]", "assert list(pair(2)) == [2, -2]",
    "assert words('b a') == ['a', 'b']", "assert sorted(words('b a c'), reverse=True) == ['c', 'b', 'a']",
    "assert maybe(-1) is None", "assert maybe(1) is not None", "assert maybe(1) is None",
    "assert abs(f(1.1) - 1.21) < 1e-9", "assert math.isclose(f(0.1), 0.01)", "assert math.isclose(f(0.1), 0.02)",
    "assert f(2) in [1, 4, 9]", "assert f(2) not in {1, 4}", "assert len(words('a b c')) == 3",
    "assert f(2) == 4 and f(3) == 9", "assert f(2) == 5 or f(3) == 9", "assert not f(0)", "assert f(1)",
    "assert Solution().add(2, 3) == 5", "assert f(2) + f(3) == 13", "assert words('x y')[0] == 'x'",
    "assert words('x y z')[1:] == ['y', 'z']", "assert boom() == 1", "assert f(float('inf')) == float('inf')",
    "x = 4\nassert f(x) == 16", "x = 4\nassert f(x) == 15\nassert f(2) == 4", "assert f(2) == 4\nassert f(3) == 9",
    "assert {k: f(k) for k in range(3)} == {0: 0, 1: 1, 2: 4}", "assert max(pair(3)) == 3", "assert f(-2) ** 2 == 16",
    "assert f(10 ** 5) == 10 ** 10", "assert str(f(12)) == '144'", "assert f(2) == 4, 'message'",
]


def _python_verdict(test: str) -> bool:
    """The reference: Python running the trusted program and the assert itself."""
    namespace = {}
    exec(PROGRAM, namespace)
    try:
        exec(test, namespace)
    except Exception:
        return False
    return True


def test_verdicts_equal_pythons_own():
    program = f"```python\n{PROGRAM}\n```"
    expected = [_python_verdict(test) for test in ASSERTS]
    assert 0 < sum(expected) < len(expected)  # both verdicts occur
    got = [code_tests(program, [test]) == 1.0 for test in ASSERTS]
    assert got == expected, [t for t, g, e in zip(ASSERTS, got, expected) if g != e]


@pytest.mark.parametrize("test, hidden", [
    ("assert f(2) == 4817", "4817"), ("assert 4817 == f(2)", "4817"), ("assert words('a') == ['zq81']", "zq81"),
    ("assert math.isclose(f(2), 48.17)", "48.17"), ("assert abs(f(2) - 48.17) < 1e-6", "48.17"),
    ("assert f(2) in (4817, 4818)", "4817"), ("assert Solution().add(1, 2) == 4817", "4817"),
])
def test_expected_values_never_reach_the_sandbox(test, hidden):
    plan = plan_asserts(test)
    assert all(hidden not in source for _, source in plan.steps), plan.steps


@pytest.mark.parametrize("code, message", [
    ("def check(candidate):\n    assert candidate(1) == 2", "inside a FunctionDef block"),
    ("for i in range(3):\n    assert f(i) == i", "inside a For block"),
    ("x = 1", "no top-level assert"),
    ("assert f(1 ==", "not valid Python"),
])
def test_unsplittable_tests_are_data_errors(code, message):
    with pytest.raises(ValueError, match=message):
        plan_asserts(code)


@pytest.mark.parametrize("test, value", [
    ("assert 2 ** f(0) == 1", 10 ** 9), ("assert f(0) * 'ab' == ''", 10 ** 9), ("assert [0] * f(0) == []", 10 ** 12),
    ("assert f(0) ** f(0) == 1", 10 ** 6),
])
def test_hostile_reported_values_cannot_stall_the_check(test, value):
    plan = plan_asserts(test)
    reported = {step: value for step, (kind, _) in enumerate(plan.steps) if kind == "probe"}
    reported[len(plan.steps) - 1] = None  # the run-completed probe
    start = time.monotonic()
    assert checks_pass(plan, reported) is False
    assert time.monotonic() - start < 1.0


def test_a_missing_probe_fails_the_check():
    plan = plan_asserts("assert f(2) == 4")
    assert checks_pass(plan, {0: 4, 1: None})
    assert not checks_pass(plan, {0: 4})  # the program did not get through every step
    assert not checks_pass(plan, {1: None})
