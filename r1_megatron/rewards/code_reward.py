"""Code reward: run the completion's last fenced code block against test cases in the sandbox."""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Sequence

from .assert_checks import AssertPlan, checks_pass, plan_asserts
from .sandbox import SandboxConfig, run_python

_FENCE_RE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = {"", "python", "py", "python3"}
SCORING_MODES = ("fraction", "all")


@dataclasses.dataclass(frozen=True)
class StdioTest:
    """Feed ``input`` on stdin; pass when stdout equals ``output`` up to trailing whitespace on each line."""

    input: str
    output: str


@dataclasses.dataclass(frozen=True)
class AssertTest:
    """Python statements with top-level asserts (e.g. ``assert f(2) == 4``): the program's parts of each assert
    run in the sandbox and the rest is decided here (``assert_checks.py``); pass when every assert holds."""

    code: str
    plan: AssertPlan = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "plan", plan_asserts(self.code))


@dataclasses.dataclass(frozen=True)
class FunctionalTest:
    """LiveCodeBench's call-based (LeetCode) test: ``input`` holds one JSON value per line, the arguments of
    ``func_name`` (a method of ``Solution`` when the program defines that class, else a function); pass when the
    return value (a tuple read as a list) equals the JSON value ``output``. As in LiveCodeBench's runner the
    program runs after ``FUNCTIONAL_PRELUDE``, so LeetCode-style code using ``List[int]`` without importing it
    works. The call runs in the sandbox; the comparison with ``output`` is made here, on plain data."""

    input: str
    output: str
    func_name: str

    def __post_init__(self):
        try:
            args = [json.loads(line) for line in self.input.splitlines() if line.strip()]
            expected = json.loads(self.output)
        except ValueError as e:
            raise ValueError(f"functional test of {self.func_name!r}: input and output must be JSON ({e})") from None
        object.__setattr__(self, "_args_json", json.dumps(args))
        object.__setattr__(self, "_expected", expected)

    def probe(self) -> str:
        """The expression the sandbox evaluates: the call of the solution on the test's arguments."""
        fn = f"(getattr(Solution(), {self.func_name!r}) if 'Solution' in globals() else {self.func_name})"
        return f"{fn}(*__import__('json').loads({self._args_json!r}))"

    def passes(self, value) -> bool:
        return (list(value) if type(value) is tuple else value) == self._expected


TestCase = StdioTest | AssertTest | FunctionalTest
# What LeetCode's judge has in scope before a solution runs, as LiveCodeBench's runner gives it to call-based
# programs: star imports of the standard modules solutions use unimported (List, deque, lru_cache, inf, ...), then
# the builtins again (math's pow, re's compile and io's open would otherwise shadow them), the modules by name,
# and a recursion limit for recursive searches.
_PRELUDE_MODULES = ("typing", "collections", "heapq", "bisect", "itertools", "functools", "math", "operator",
                    "string", "re", "copy", "random", "statistics", "datetime", "io", "json")
FUNCTIONAL_PRELUDE = ("".join(f"from {m} import *\n" for m in _PRELUDE_MODULES) + "from builtins import *\n"
                      + "".join(f"import {m}\n" for m in _PRELUDE_MODULES) + "import sys\nsys.setrecursionlimit(50000)\n")


def last_code_block(completion: str) -> str | None:
    """The body of the last fenced block tagged python (or untagged), else None."""
    blocks = [m.group(2) for m in _FENCE_RE.finditer(completion) if m.group(1).lower() in _PYTHON_TAGS]
    return blocks[-1] if blocks else None


def parse_test_cases(tests: Any) -> list[TestCase]:
    """Normalise the dataset's test field into test cases.

    Accepted: a JSON string of any of the following; ``{"inputs": [...], "outputs": [...]}`` (APPS/TACO style);
    a list whose items are ``{"input": ..., "output": ...}`` dicts, assert-statement strings, or
    ``{"assert": ...}`` dicts. An input/output dict may carry LiveCodeBench's ``"testtype"``: ``"stdin"`` (the
    same as none), or ``"functional"``, which also needs ``"func_name"`` (``FunctionalTest``; LiveCodeBench keeps
    the name in each problem's ``metadata``). Anything else is a data error and raises ValueError.
    """
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except ValueError as e:
            raise ValueError(f"code tests: not valid JSON ({e})") from None
    if isinstance(tests, dict) and set(tests) >= {"inputs", "outputs"}:
        if not all(isinstance(tests[k], list) for k in ("inputs", "outputs")):
            raise ValueError(f"code tests: 'inputs' and 'outputs' must be lists, got "
                             f"{type(tests['inputs']).__name__} and {type(tests['outputs']).__name__}")
        if len(tests["inputs"]) != len(tests["outputs"]):
            raise ValueError(f"code tests: {len(tests['inputs'])} inputs but {len(tests['outputs'])} outputs")
        return [StdioTest(_text(i), _text(o)) for i, o in zip(tests["inputs"], tests["outputs"])]
    if isinstance(tests, (list, tuple)) and tests:
        return [_one_case(t, k) for k, t in enumerate(tests)]
    raise ValueError(f"code tests: expected a non-empty list or an inputs/outputs dict, got {type(tests).__name__}")


def _one_case(item: Any, index: int) -> TestCase:
    try:
        return _case(item, index)
    except ValueError as e:
        message = str(e)
        raise ValueError(message if message.startswith("code tests:") else f"code tests: item {index}: {message}") from None


def _case(item: Any, index: int) -> TestCase:
    if isinstance(item, (StdioTest, AssertTest, FunctionalTest)):
        return item
    if isinstance(item, str):
        return AssertTest(item)
    if isinstance(item, dict) and "assert" in item:
        return AssertTest(str(item["assert"]))
    if isinstance(item, dict) and {"input", "output"} <= set(item):
        return _io_case(item, index)
    raise ValueError(f"code tests: item {index} is neither an assert string nor an input/output dict: {item!r:.200}")


def _io_case(item: dict, index: int) -> StdioTest | FunctionalTest:
    testtype = item.get("testtype", "stdin")
    if testtype == "stdin":
        return StdioTest(_text(item["input"]), _text(item["output"]))
    if testtype != "functional":
        raise ValueError(f"code tests: item {index} has testtype {testtype!r}; expected 'stdin' or 'functional'")
    name = item.get("func_name")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"code tests: item {index} is a functional (call-based) test without a valid 'func_name' "
                         f"(got {name!r})")
    return FunctionalTest(_text(item["input"]), _text(item["output"]), name)


def _text(value: Any) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def _normalise_output(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def _passes(program: str, case: TestCase, config: SandboxConfig) -> bool:
    if isinstance(case, StdioTest):
        result = run_python(program, stdin=case.input.encode("utf-8", "surrogatepass"), config=config)
        if result.timed_out or result.exit_code != 0 or result.output_truncated:
            return False
        return _normalise_output(result.stdout.decode("utf-8", "replace")) == _normalise_output(case.output)
    if isinstance(case, AssertTest):
        result = run_python(program, probes=case.plan.steps, config=config)
        return not result.timed_out and checks_pass(case.plan, result.probes)
    result = run_python(FUNCTIONAL_PRELUDE + program, probes=[("probe", case.probe())], config=config)
    return not result.timed_out and 0 in result.probes and case.passes(result.probes[0])


def code_tests(completion: str, tests: Any, *, timeout_s: float = 5.0, scoring: str = "fraction",
               python: str | None = None, memory_bytes: int | None = None, max_disk_bytes: int | None = None,
               config: SandboxConfig | None = None) -> float:
    """Share of test cases the completion's last fenced code block passes (``scoring="all"``: 1.0 or 0.0).

    Each test case is a separate sandboxed run (see ``sandbox.py``) with a wall limit of ``timeout_s``
    (overriding ``config.wall_s``); ``python``, ``memory_bytes`` and ``max_disk_bytes``, when given, override
    the config's interpreter (e.g. a virtualenv with numpy) and limits. No code block, code that fails, hangs,
    crashes, or prints too much: that test scores 0. ``tests`` is parsed by ``parse_test_cases``; malformed
    tests (data, not model output) raise ValueError, as does an unknown ``scoring``.
    """
    if scoring not in SCORING_MODES:
        raise ValueError(f"code_tests: scoring must be one of {SCORING_MODES}, got {scoring!r}")
    cases: Sequence[TestCase] = parse_test_cases(tests)
    program = last_code_block(completion) if isinstance(completion, str) else None
    if program is None:
        return 0.0
    overrides = {k: v for k, v in (("python", python), ("memory_bytes", memory_bytes),
                                   ("max_disk_bytes", max_disk_bytes)) if v is not None}
    config = dataclasses.replace(config or SandboxConfig(), wall_s=timeout_s, **overrides)
    passed = 0
    for case in cases:
        if _passes(program, case, config):
            passed += 1
        elif scoring == "all":
            return 0.0
    return passed / len(cases)
