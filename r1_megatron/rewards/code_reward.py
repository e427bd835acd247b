"""Code reward: run the completion's last fenced code block against test cases in the sandbox."""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Sequence

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
    """Python statements (e.g. ``assert f(2) == 4``) run in the program's namespace; pass when all run."""

    code: str


@dataclasses.dataclass(frozen=True)
class FunctionalTest:
    """LiveCodeBench's call-based (LeetCode) test: ``input`` holds one JSON value per line, the arguments of
    ``func_name`` (a method of ``Solution`` when the program defines that class, else a function); pass when the
    return value (a tuple read as a list) equals the JSON value ``output``. As in LiveCodeBench's runner the
    program runs after ``FUNCTIONAL_PRELUDE``, so LeetCode-style code using ``List[int]`` without importing it
    works."""

    input: str
    output: str
    func_name: str

    def assert_code(self) -> str:
        """The statements that call the function and assert its result, run in the program's namespace."""
        return (f"import json as _json\n"
                f"_args = [_json.loads(_line) for _line in {self.input!r}.splitlines() if _line.strip()]\n"
                f"_fn = getattr(Solution(), {self.func_name!r}) if 'Solution' in globals() else {self.func_name}\n"
                f"_got = _fn(*_args)\n"
                f"assert (list(_got) if isinstance(_got, tuple) else _got) == _json.loads({self.output!r})\n")


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
        if len(tests["inputs"]) != len(tests["outputs"]):
            raise ValueError(f"code tests: {len(tests['inputs'])} inputs but {len(tests['outputs'])} outputs")
        return [StdioTest(_text(i), _text(o)) for i, o in zip(tests["inputs"], tests["outputs"])]
    if isinstance(tests, (list, tuple)) and tests:
        return [_one_case(t, k) for k, t in enumerate(tests)]
    raise ValueError(f"code tests: expected a non-empty list or an inputs/outputs dict, got {type(tests).__name__}")


def _one_case(item: Any, index: int) -> TestCase:
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
    if isinstance(case, AssertTest):
        return run_python(program, tests=case.code, config=config).passed_marker
    if isinstance(case, FunctionalTest):
        return run_python(FUNCTIONAL_PRELUDE + program, tests=case.assert_code(), config=config).passed_marker
    result = run_python(program, stdin=case.input.encode("utf-8", "surrogatepass"), config=config)
    if result.timed_out or result.exit_code != 0 or result.output_truncated:
        return False
    return _normalise_output(result.stdout.decode("utf-8", "replace")) == _normalise_output(case.output)


def code_tests(completion: str, tests: Any, *, timeout_s: float = 5.0, scoring: str = "fraction",
               config: SandboxConfig | None = None) -> float:
    """Share of test cases the completion's last fenced code block passes (``scoring="all"``: 1.0 or 0.0).

    Each test case is a separate sandboxed run (see ``sandbox.py``) with a wall limit of ``timeout_s``
    (overriding ``config.wall_s``). No code block, code that fails, hangs, crashes, or prints too much:
    that test scores 0. ``tests`` is parsed by ``parse_test_cases``; malformed tests (data, not model
    output) raise ValueError, as does an unknown ``scoring``.
    """
    if scoring not in SCORING_MODES:
        raise ValueError(f"code_tests: scoring must be one of {SCORING_MODES}, got {scoring!r}")
    cases: Sequence[TestCase] = parse_test_cases(tests)
    program = last_code_block(completion) if isinstance(completion, str) else None
    if program is None:
        return 0.0
    config = dataclasses.replace(config or SandboxConfig(), wall_s=timeout_s)
    passed = 0
    for case in cases:
        if _passes(program, case, config):
            passed += 1
        elif scoring == "all":
            return 0.0
    return passed / len(cases)
