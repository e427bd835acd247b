"""Assert-style test cases decided outside the program under test.

A test such as ``assert sorted(f([3, 1])) == [1, 3]`` is split in two. The parts that need the program (here
``f([3, 1])``) become *probes*: expressions the sandbox evaluates in the program's namespace and reports as plain
data. Everything else (the literal ``[1, 3]``, the comparison, ``sorted``) stays here and is evaluated by
``checks_pass`` over the reported values. So expected values never enter the untrusted process (it cannot read
them from its frames, its stdin or a file), and the comparison runs on builtin types only (no ``__eq__`` of
the program's).

Evaluated here: literals, displays (``[a, b]``, ``{k: v}``), ``not``/``and``/``or``, unary and binary arithmetic
(bounded, so a reported value cannot make it run long), comparisons (chained, ``in``, ``is``), subscripts and
slices, and calls of ``SAFE_CALLS``. Any other sub-expression is a probe as a whole: a name, an attribute, a call
of anything else, a comprehension. Literals inside a probe are sent to the program (they are its inputs), so an
expected value written as a call of a test-defined helper (``assert f(2) == expected_for(2)``) is computed in
the untrusted process: keep expected values literal. Statements other than top-level asserts run in the sandbox
before the asserts that follow them (set-up); an assert nested in a block cannot be split and is a data error.
"""
from __future__ import annotations

import ast
import builtins
import dataclasses
import math
import operator
from typing import Any

SAFE_CALLS = {name: getattr(builtins, name) for name in (
    "abs", "round", "len", "sorted", "set", "frozenset", "list", "tuple", "str", "int", "float", "bool", "min", "max",
    "sum", "all", "any", "reversed")}
SAFE_MATH = {name: getattr(math, name) for name in ("isclose", "isfinite", "isnan", "isinf", "fabs", "floor", "ceil")}
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
           ast.BitAnd: operator.and_, ast.BitOr: operator.or_, ast.BitXor: operator.xor}
_UNARY = {ast.Not: operator.not_, ast.USub: operator.neg, ast.UAdd: operator.pos}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
            ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
_MAX_ITEMS = 1_000_000  # the largest sequence arithmetic here may build
_PROBE = "__probe_"


class CheckFailed(Exception):
    """The check cannot be evaluated (a probe missing, an operation refused or raising): the test fails."""


@dataclasses.dataclass(frozen=True)
class AssertPlan:
    """``steps`` run in the sandbox (``("exec", code)`` or ``("probe", expression)``); ``checks`` are the
    asserts' tests with each probe replaced by the name ``__probe_<step>``."""

    steps: tuple[tuple[str, str], ...]
    checks: tuple[ast.expr, ...]


def plan_asserts(code: str) -> AssertPlan:
    """Split ``code`` (Python statements with top-level asserts) into sandbox steps and checks kept here.
    ValueError: not Python, no top-level assert, or an assert nested in a block."""
    try:
        module = ast.parse(code)
    except SyntaxError as e:
        raise ValueError(f"assert test is not valid Python ({e.msg}, line {e.lineno})") from None
    steps: list[tuple[str, str]] = []
    checks = []
    for statement in module.body:
        if isinstance(statement, ast.Assert):
            checks.append(_split(statement.test, steps))
        elif any(isinstance(node, ast.Assert) for node in ast.walk(statement)):
            raise ValueError(f"assert test line {statement.lineno}: an assert inside a {type(statement).__name__} "
                             "block cannot be checked outside the program; write the asserts at top level")
        else:
            steps.append(("exec", ast.get_source_segment(code, statement) or ast.unparse(statement)))
    if not checks:
        raise ValueError(f"assert test has no top-level assert statement: {code!r:.120}")
    # the run got through every step (a program that exits early must not pass asserts that hold without it)
    checks.append(ast.Compare(_probe(ast.Constant(None), steps), [ast.Is()], [ast.Constant(None)]))
    return AssertPlan(tuple(steps), tuple(checks))


def _probe(node: ast.expr, steps: list) -> ast.expr:
    steps.append(("probe", ast.unparse(node)))
    return ast.Name(id=f"{_PROBE}{len(steps) - 1}", ctx=ast.Load())


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _safe_function(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in SAFE_CALLS
    return (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "math"
            and func.attr in SAFE_MATH)


def _split(node: ast.expr, steps: list) -> ast.expr:
    """``node`` with every sub-expression that needs the program replaced by a probe."""
    if _is_literal(node):
        return node
    split = lambda child: _split(child, steps) if child is not None else None  # noqa: E731
    if isinstance(node, ast.Compare):
        return ast.Compare(split(node.left), node.ops, [split(c) for c in node.comparators])
    if isinstance(node, ast.BoolOp):
        return ast.BoolOp(node.op, [split(v) for v in node.values])
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return ast.UnaryOp(node.op, split(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return ast.BinOp(split(node.left), node.op, split(node.right))
    if isinstance(node, ast.Subscript):
        return ast.Subscript(split(node.value), split(node.slice), ast.Load())
    if isinstance(node, ast.Slice):
        return ast.Slice(split(node.lower), split(node.upper), split(node.step))
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and not any(isinstance(e, ast.Starred) for e in node.elts):
        return type(node)(elts=[split(e) for e in node.elts], **({"ctx": ast.Load()} if hasattr(node, "ctx") else {}))
    if isinstance(node, ast.Dict) and None not in node.keys:
        return ast.Dict([split(k) for k in node.keys], [split(v) for v in node.values])
    if (isinstance(node, ast.Call) and _safe_function(node.func) and all(k.arg for k in node.keywords)
            and not any(isinstance(a, ast.Starred) for a in node.args)):
        return ast.Call(node.func, [split(a) for a in node.args],
                        [ast.keyword(k.arg, split(k.value)) for k in node.keywords])
    return _probe(node, steps)


def checks_pass(plan: AssertPlan, probes: dict[int, Any]) -> bool:
    """Whether every assert holds over the reported probe values (a missing probe or an error fails)."""
    try:
        return all(bool(_evaluate(check, probes)) for check in plan.checks)
    except (CheckFailed, ArithmeticError, TypeError, ValueError, KeyError, IndexError, AttributeError,
            RecursionError, MemoryError):
        return False


def _evaluate(node: ast.expr, probes: dict[int, Any]) -> Any:
    evaluate = lambda child: _evaluate(child, probes)  # noqa: E731
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        step = int(node.id.removeprefix(_PROBE))
        if step not in probes:
            raise CheckFailed(f"probe {step} was not reported")
        return probes[step]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](evaluate(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return {evaluate(k): evaluate(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](evaluate(node.operand))
    if isinstance(node, ast.BinOp):
        return _binary(type(node.op), evaluate(node.left), evaluate(node.right))
    if isinstance(node, ast.BoolOp):
        return _bool_op(node, evaluate)
    if isinstance(node, ast.Compare):
        return _compare(node, evaluate)
    if isinstance(node, ast.Subscript):
        return evaluate(node.value)[evaluate(node.slice)]
    if isinstance(node, ast.Slice):
        return slice(*(evaluate(p) if p is not None else None for p in (node.lower, node.upper, node.step)))
    if isinstance(node, ast.Call):
        func = SAFE_CALLS[node.func.id] if isinstance(node.func, ast.Name) else SAFE_MATH[node.func.attr]
        return func(*map(evaluate, node.args), **{k.arg: evaluate(k.value) for k in node.keywords})
    raise CheckFailed(f"cannot evaluate {type(node).__name__}")


def _bool_op(node: ast.BoolOp, evaluate) -> Any:
    value = None
    for child in node.values:
        value = evaluate(child)
        if bool(value) == isinstance(node.op, ast.Or):
            return value
    return value


def _compare(node: ast.Compare, evaluate) -> bool:
    left = evaluate(node.left)
    for op, comparator in zip(node.ops, node.comparators):
        right = evaluate(comparator)
        if not _COMPARE[type(op)](left, right):
            return False
        left = right
    return True


def _binary(op: type, left: Any, right: Any) -> Any:
    """``left op right`` on plain data, refusing results too large to build quickly (a reported value is
    untrusted: ``2 ** probe`` with a probe of 10**9 must not hang the scorer)."""
    if op is ast.Pow and isinstance(right, int) and isinstance(left, int):
        if abs(right) > 10_000 or abs(left).bit_length() * abs(right) > 1_000_000:
            raise CheckFailed("power too large")
    if op is ast.Mult:
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, (str, bytes, list, tuple)) and isinstance(count, int) and len(seq) * count > _MAX_ITEMS:
                raise CheckFailed("repetition too large")
    return _BINOPS[op](left, right)
