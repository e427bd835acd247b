"""Benchmark definitions (a YAML file of ``BenchmarkSpec``) and their questions as the model sees them.

    specs = load_benchmarks(None, ["aime_sample"])           # the shipped benchmarks.yaml
    questions = load_questions(specs[0], tokenizer)          # EvalQuestion per record: prompt, ids, reference

Defaults follow DeepSeek-R1's evaluation protocol (docs/r1_reference.md, "Evaluation protocol"): no system prompt
(the chat template gets one user message), the math instruction "Please reason step by step, and put your final
answer within \\boxed{}." after the question, and responses that start with "<think>\\n" (appended to the prompt
unless the chat template already ends with it). Sampling settings (temperature 0.6, top-p 0.95) belong to the
evaluation run, not to a benchmark; ``k`` is per benchmark because R1 used 64 samples for AIME and fewer elsewhere.
Every problem is one line naming the file, the line and the field (records) or the YAML line and dotted key
(definitions). A bad record stops loading: a benchmark scored on a subset of its questions is another benchmark.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from pathlib import Path
from typing import Any, Sequence

from r1_megatron.data.answer_format import AnswerFormat, UnreadableAnswer, reference_answer
from r1_megatron.data.records import DataError, read_records
from r1_megatron.data.templates import PromptTemplate, render_prompt
from r1_megatron.rewards.code_reward import parse_test_cases
from r1_megatron.run_config import load_run_config

from .scorers import ScorerName

DEFAULT_BENCHMARKS = Path(__file__).resolve().parent / "benchmarks.yaml"
THINK_PREFIX = "<think>\n"
MATH_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."  # R1's usage advice
MULTIPLE_CHOICE_SUFFIX = "Please reason step by step, and put the letter of the correct choice within \\boxed{}."
CODE_SUFFIX = "Please reason step by step, then give your complete solution in one ```python code block."
DEFAULT_SUFFIX = {ScorerName.MATH: MATH_SUFFIX, ScorerName.MULTIPLE_CHOICE: MULTIPLE_CHOICE_SUFFIX,
                  ScorerName.CODE: CODE_SUFFIX, ScorerName.EXACT: "", ScorerName.ARITHMETIC: ""}
STDIN_INSTRUCTION = "Read the input from standard input and write the answer to standard output."
STARTER_INSTRUCTION = "Complete this starter code:"
_NAME = re.compile(r"[A-Za-z0-9_-]+")  # benchmark names become CLI list items, YAML keys and results.json keys


@dataclasses.dataclass(frozen=True)
class BenchmarkFields:
    """Which record field holds what. Only the fields the benchmark's scorer reads are read (``answer``: math,
    exact, arithmetic, and multiple choice with ``choices``; ``tests``, ``starter_code``, ``metadata``: code;
    ``choices`` or ``correct`` + ``incorrect``: multiple choice). ``id`` None: the id is "file:line"."""

    question: str = "question"
    answer: str | None = "answer"
    id: str | None = None
    tests: str | None = None  # code: test cases in a format rewards/code_reward.parse_test_cases reads
    starter_code: str | None = None  # code: shown under the question when the record's value is not empty
    metadata: str | None = None  # code: LiveCodeBench's metadata (a JSON object with func_name, functional tests)
    choices: str | None = None  # multiple choice: a list (or its JSON string), in order A, B, ...; answer: a letter
    correct: str | None = None  # multiple choice (GPQA): the correct choice's column ...
    incorrect: tuple[str, ...] = ()  # ... and the incorrect ones'; the choices are shuffled per question

    def __post_init__(self):
        object.__setattr__(self, "incorrect", (self.incorrect,) if isinstance(self.incorrect, str)
                           else tuple(self.incorrect))


_CODE_FIELDS = ("tests", "starter_code", "metadata")
_CHOICE_FIELDS = ("choices", "correct", "incorrect")


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark: its file, how records become prompts, how samples are scored and which metrics to report.

    ``suffix`` None: the scorer's default (``DEFAULT_SUFFIX``; "" for none), added under the question after a
    blank line. ``think_prefix``: the response starts with "<think>\\n" (appended to the prompt where it does not
    already end with it). ``format``: the reward name whose mean is reported as the format rate (None: not reported).
    ``k`` samples per question; ``pass_ks``: the pass@K reported besides pass@1 (each in 1..k); ``cons_k``: the
    majority vote over the first cons_k samples (None: none; code answers have no vote). ``limit``: only the first
    ``limit`` records. ``answer_format``: where the answer field holds the final answer (data/answer_format.py).
    """

    name: str
    path: str
    scorer: ScorerName | str  # a ScorerName value; held as the ScorerName after construction
    template: PromptTemplate = PromptTemplate.CHAT
    fields: BenchmarkFields = BenchmarkFields()
    suffix: str | None = None
    think_prefix: bool | None = None  # None: true for the chat template (R1's models), false for r1_zero and raw
    format: str | None = None
    k: int = 16
    pass_ks: tuple[int, ...] = ()
    cons_k: int | None = None
    limit: int | None = None
    answer_format: AnswerFormat = AnswerFormat.AUTO

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"benchmark name {self.name!r} must be letters, digits, '_' and '-'")
        self._normalise()
        self._check_counts()
        self._check_fields()

    def _normalise(self) -> None:
        """Values given in Python as plain data (a dict of fields, strings for enums, a list) as their types."""
        name = self.name
        if isinstance(self.fields, dict):  # BenchmarkSpec(..., fields={"question": "problem"}) in Python
            try:
                object.__setattr__(self, "fields", BenchmarkFields(**self.fields))
            except TypeError as e:
                raise ValueError(f"{name}.fields: {e}") from None
        try:
            object.__setattr__(self, "scorer", ScorerName(self.scorer))
        except ValueError:
            known = ", ".join(s.value for s in ScorerName)
            raise ValueError(f"{name}.scorer: unknown scorer {self.scorer!r}; known: {known}") from None
        for field, kind in (("template", PromptTemplate), ("answer_format", AnswerFormat)):
            try:
                object.__setattr__(self, field, kind(getattr(self, field)))
            except ValueError:
                allowed = ", ".join(repr(m.value) for m in kind)
                raise ValueError(f"{name}.{field}: expected one of {allowed}, got {getattr(self, field)!r}") from None
        if self.suffix is None:
            object.__setattr__(self, "suffix", DEFAULT_SUFFIX[self.scorer])
        if self.think_prefix is None:  # the R1-Zero model writes its own " <think>"; raw prompts are complete
            object.__setattr__(self, "think_prefix", self.template is PromptTemplate.CHAT)
        object.__setattr__(self, "pass_ks", tuple(self.pass_ks))

    def _check_counts(self) -> None:
        name, k = self.name, self.k
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"{name}.k: must be an integer >= 1, got {k!r}")
        bad = [K for K in self.pass_ks if not isinstance(K, int) or not 1 <= K <= k]
        if bad or len(set(self.pass_ks)) != len(self.pass_ks):
            raise ValueError(f"{name}.pass_ks: entries must be distinct integers in 1..{k} (the samples per question), "
                             f"got {list(self.pass_ks)}")
        if self.cons_k is not None and not 1 <= self.cons_k <= k:
            raise ValueError(f"{name}.cons_k: must be in 1..{k} (the samples per question) or null, got {self.cons_k!r}")
        if self.cons_k is not None and self.scorer is ScorerName.CODE:
            raise ValueError(f"{name}.cons_k: code answers have no majority vote (no answer is extracted); set null")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"{name}.limit: must be >= 1 or null, got {self.limit!r}")

    def _check_fields(self) -> None:
        name, fields, scorer = self.name, self.fields, self.scorer
        if not fields.question:
            raise ValueError(f"{name}.fields.question: must name the question field")
        if scorer is not ScorerName.CODE:
            for field in _CODE_FIELDS:
                if getattr(fields, field):
                    raise ValueError(f"{name}.fields.{field}: only code benchmarks read it (this one is {scorer.value})")
        if scorer is not ScorerName.MULTIPLE_CHOICE:
            for field in _CHOICE_FIELDS:
                if getattr(fields, field):
                    raise ValueError(f"{name}.fields.{field}: only multiple_choice benchmarks read it "
                                     f"(this one is {scorer.value})")
        if scorer is ScorerName.CODE and not fields.tests:
            raise ValueError(f"{name}.fields.tests: code benchmarks need the record field holding the test cases")
        if scorer is ScorerName.MULTIPLE_CHOICE:
            gpqa, listed = bool(fields.correct or fields.incorrect), bool(fields.choices)
            complete = fields.correct and fields.incorrect if gpqa else fields.answer
            if gpqa == listed or not complete:
                raise ValueError(f"{name}.fields: multiple_choice needs either fields.correct and fields.incorrect "
                                 f"(columns, GPQA style) or fields.choices (a list) with fields.answer (a letter)")
        elif scorer is not ScorerName.CODE and not fields.answer:
            raise ValueError(f"{name}.fields.answer: {scorer.value} benchmarks need the reference answer field")

    def with_k(self, k: int) -> "BenchmarkSpec":
        """This benchmark at ``k`` samples per question (an evaluation-wide override): pass@K above k are dropped
        and the vote covers at most k samples."""
        cons_k = None if self.cons_k is None else min(self.cons_k, k)
        return dataclasses.replace(self, k=k, pass_ks=tuple(K for K in self.pass_ks if K <= k), cons_k=cons_k)


@dataclasses.dataclass(frozen=True)
class BenchmarkSuite:
    """A benchmarks YAML file: ``benchmarks: {NAME: {path: ..., scorer: ..., ...}}``; the key is the name."""

    DEFAULT_RECIPE = DEFAULT_BENCHMARKS
    benchmarks: dict[str, BenchmarkSpec]

    def __post_init__(self):
        if not self.benchmarks:
            raise ValueError("benchmarks: defines no benchmark")
        for key, spec in self.benchmarks.items():
            if spec.name != key:
                raise ValueError(f"benchmarks.{key}.name: the name is the benchmark's key; leave it out")


@dataclasses.dataclass(frozen=True)
class EvalQuestion:
    benchmark: str
    index: int  # 0-based position in the benchmark's file order (after `limit`)
    id: str  # the record's id field, else "file:line" (the file's base name, so it survives moving the data)
    question: str  # the question text as the model sees it inside the template (suffix added)
    prompt: str  # rendered prompt text
    prompt_ids: tuple[int, ...]
    reference: dict  # {"answer": str | None, "tests": Any | None} (the reward registry's sample)
    source: str  # "file:line"


def load_benchmarks(path: str | os.PathLike | None = None, names: Sequence[str] | None = None) -> list[BenchmarkSpec]:
    """The benchmarks defined in the YAML at ``path`` (None: the shipped benchmarks.yaml), all in file order or
    ``names`` in that order. Relative data paths resolve against the YAML's directory; a selected benchmark
    whose file does not exist is a FileNotFoundError naming its key and path."""
    yaml_path = DEFAULT_BENCHMARKS if path is None else Path(path)
    shown = yaml_path.name if path is None else os.fspath(path)
    suite = load_run_config(path, cls=BenchmarkSuite, prepare=_name_entries)
    if names is None:
        names = list(suite.benchmarks)
    unknown = [n for n in names if n not in suite.benchmarks]
    if unknown:
        raise ValueError(f"{shown}: unknown benchmark(s) {', '.join(map(repr, unknown))}; defined: "
                         f"{', '.join(suite.benchmarks)}")
    specs = []
    for name in dict.fromkeys(names):
        spec = suite.benchmarks[name]
        # absolute paths stay as they are
        data_path = os.path.normpath(os.path.join(yaml_path.parent, os.path.expanduser(spec.path)))
        if not os.path.isfile(data_path):
            raise FileNotFoundError(f"{shown}: benchmarks.{name}.path: no such file {data_path!r}")
        specs.append(dataclasses.replace(spec, path=data_path))
    return specs


def _name_entries(data: dict) -> None:
    """Give every benchmark its key as its name (BenchmarkSpec's messages then name "benchmarks.KEY.field")."""
    benchmarks = data.get("benchmarks")
    if isinstance(benchmarks, dict):
        for key, entry in benchmarks.items():
            if isinstance(entry, dict):
                entry.setdefault("name", key)


def load_questions(spec: BenchmarkSpec, tokenizer) -> list[EvalQuestion]:
    """Every record of the benchmark's file (the first ``spec.limit``), rendered and tokenized, in file order.
    Raises DataError (``file:line: field 'x': problem``) at the first bad record."""
    if not os.path.isfile(spec.path):
        raise FileNotFoundError(f"benchmarks.{spec.name}.path: no such file {spec.path!r}")
    questions: list[EvalQuestion] = []
    first_line: dict[str, int] = {}
    for line, record in read_records(spec.path):
        if spec.limit is not None and len(questions) == spec.limit:
            break
        if isinstance(record, DataError):
            raise record
        qid = _question_id(spec, record, line, first_line)
        text, reference = _QUESTION_BUILDERS[spec.scorer](spec, _Record(spec.path, line, record), qid)
        question = "\n\n".join(part for part in (text, spec.suffix) if part)
        prompt = render_prompt(spec.template, question, tokenizer)
        if spec.think_prefix and not prompt.endswith(THINK_PREFIX):
            prompt += THINK_PREFIX
        questions.append(EvalQuestion(spec.name, len(questions), qid, question, prompt,
                                      tuple(tokenizer.encode(prompt)), reference, f"{spec.path}:{line}"))
    if not questions:
        raise ValueError(f"benchmarks.{spec.name}: {spec.path} holds no records")
    return questions


@dataclasses.dataclass(frozen=True)
class _Record:
    path: str
    line: int
    values: dict[str, Any]

    def error(self, field: str | None, problem: str) -> DataError:
        return DataError(self.path, self.line, problem, field=field)

    def raw(self, field: str) -> Any:
        """The field's value; missing, null or (CSV's empty cell) blank text is an error."""
        value = self.values.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise self.error(field, "missing")
        return value

    def text(self, field: str) -> str:
        return str(self.raw(field)).strip()


def _question_id(spec: BenchmarkSpec, record: dict, line: int, first_line: dict[str, int]) -> str:
    if spec.fields.id is None:
        return f"{os.path.basename(spec.path)}:{line}"
    qid = _Record(spec.path, line, record).text(spec.fields.id)
    if qid in first_line:
        raise DataError(spec.path, line, f"duplicate id {qid!r} (first on line {first_line[qid]})",
                        field=spec.fields.id)
    first_line[qid] = line
    return qid


def _answer_question(spec: BenchmarkSpec, record: _Record, qid: str) -> tuple[str, dict]:
    """Math, exact and arithmetic: the question, and the final answer read from the answer field."""
    question, field = record.text(spec.fields.question), spec.fields.answer
    text = record.text(field)
    try:
        answer = reference_answer(text, spec.answer_format)
    except UnreadableAnswer as e:
        raise record.error(field, f"{e} with answer_format={spec.answer_format.value}: {text!r:.80}") from None
    return question, {"answer": answer, "tests": None}


def _multiple_choice_question(spec: BenchmarkSpec, record: _Record, qid: str) -> tuple[str, dict]:
    """The question with its choices as "A) ...", one a line; the reference is the correct choice's letter.

    GPQA style (``correct`` + ``incorrect`` columns): the choices [correct, *incorrect] are shuffled by
    ``random.Random(id)`` (Python's string seeding hashes with SHA-512: the same order on every run and machine,
    and a different one per question, so the correct answer is not always A). ``choices`` style: the list's
    order, and the answer field's letter."""
    fields = spec.fields
    question = record.text(fields.question)
    if fields.correct:
        correct = record.text(fields.correct)
        choices = [correct] + [record.text(f) for f in fields.incorrect]
        random.Random(qid).shuffle(choices)
        letter = _letter(choices.index(correct))
    else:
        choices = _choice_list(record, fields.choices)
        letter = record.text(fields.answer).upper()
        if len(letter) != 1 or not 0 <= ord(letter) - ord("A") < len(choices):
            raise record.error(fields.answer, f"expected a choice letter A-{_letter(len(choices) - 1)}, "
                                              f"got {record.text(fields.answer)!r}")
    if len(choices) > 26:
        raise record.error(fields.choices or fields.correct, f"{len(choices)} choices; at most 26 (A-Z)")
    listed = "\n".join(f"{_letter(i)}) {choice}" for i, choice in enumerate(choices))
    return f"{question}\n\n{listed}", {"answer": letter, "tests": None}


def _letter(index: int) -> str:
    return chr(ord("A") + index)


def _choice_list(record: _Record, field: str) -> list[str]:
    value = record.raw(field)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise record.error(field, "expected a list of choices (or its JSON string)") from None
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise record.error(field, f"expected a list of at least 2 choices, got {value!r:.80}")
    return [str(choice).strip() for choice in value]


def _code_question(spec: BenchmarkSpec, record: _Record, qid: str) -> tuple[str, dict]:
    """The problem statement, then the starter code (when the record has some) or the stdin instruction; the
    reference holds the test cases, checked here with the code reward's own parser."""
    fields = spec.fields
    question, tests = record.text(fields.question), record.raw(fields.tests)
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except ValueError as e:
            raise record.error(fields.tests, f"code tests: not valid JSON ({e})") from None
    func_name = _func_name(record, fields.metadata)
    if func_name is not None and isinstance(tests, list):
        tests = [dict(t, func_name=func_name) if isinstance(t, dict) and t.get("testtype") == "functional" else t
                 for t in tests]
    try:
        parse_test_cases(tests)
    except ValueError as e:
        unnamed = "func_name" in str(e) and not fields.metadata
        hint = " (set fields.metadata: LiveCodeBench keeps func_name there)" if unnamed else ""
        raise record.error(fields.tests, f"{e}{hint}") from None
    starter = str(record.values.get(fields.starter_code) or "") if fields.starter_code else ""
    starter = starter.rstrip().lstrip("\n")  # the first line's indentation stays
    how = f"{STARTER_INSTRUCTION}\n```python\n{starter}\n```" if starter else STDIN_INSTRUCTION
    return f"{question}\n\n{how}", {"answer": None, "tests": tests}


def _func_name(record: _Record, field: str | None) -> str | None:
    """LiveCodeBench's ``metadata`` (a JSON object or its string) -> its "func_name", None without one."""
    value = record.values.get(field) if field else None
    if isinstance(value, str) and value.strip():
        try:
            value = json.loads(value)
        except ValueError:
            raise record.error(field, "expected a JSON object") from None
    return value.get("func_name") if isinstance(value, dict) else None


_QUESTION_BUILDERS = {ScorerName.MATH: _answer_question, ScorerName.EXACT: _answer_question,
                      ScorerName.ARITHMETIC: _answer_question, ScorerName.MULTIPLE_CHOICE: _multiple_choice_question,
                      ScorerName.CODE: _code_question}
