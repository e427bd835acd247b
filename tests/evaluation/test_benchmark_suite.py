"""Benchmark definitions and their questions: the shipped samples load with a real tokenizer into R1-protocol
prompts, their answers are right, multiple-choice shuffling is deterministic and keeps the reference letter on
the correct choice, the code tests pass a correct solution in the sandbox, and every bad input is one line
naming its file and line or its YAML key."""
import csv
import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest

from r1_megatron.data import DataError, PromptTemplate, render_r1_zero
from r1_megatron.data.answer_format import AnswerFormat, reference_answer
from r1_megatron.data.synthetic_chat import build_chat_tokenizer
from r1_megatron.evaluation.benchmark_suite import (DEFAULT_BENCHMARKS, MATH_SUFFIX, MULTIPLE_CHOICE_SUFFIX,
                                                    BenchmarkSpec, load_benchmarks, load_questions)
from r1_megatron.evaluation.scorers import ScorerName
from r1_megatron.rewards import get_reward
from r1_megatron.run_config import ConfigError
from r1_megatron.tokenizer import load_tokenizer

DATA = DEFAULT_BENCHMARKS.parent / "data"
SHIPPED = {"aime_sample": 7, "math500_sample": 7, "gpqa_diamond_sample": 6, "livecodebench_sample": 7}
CHAT_TURN = "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The character-level ChatML tokenizer (a real tokenizer.json + chat template, loaded as a model's is)."""
    return load_tokenizer(build_chat_tokenizer(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def shipped(tokenizer):
    return {spec.name: (spec, load_questions(spec, tokenizer)) for spec in load_benchmarks()}


def test_every_shipped_benchmark_loads_into_r1_protocol_prompts(shipped, tokenizer):
    assert {name: len(questions) for name, (_, questions) in shipped.items()} == SHIPPED
    assert {name: spec.k for name, (spec, _) in shipped.items()} == {
        "aime_sample": 64, "math500_sample": 16, "gpqa_diamond_sample": 16, "livecodebench_sample": 16}
    for name, (spec, questions) in shipped.items():
        assert spec.template is PromptTemplate.CHAT and spec.think_prefix and Path(spec.path).is_file()
        assert [q.index for q in questions] == list(range(len(questions)))
        assert len({q.id for q in questions}) == len(questions)
        for q in questions:
            # no system prompt: the question is the one user message; the response starts inside <think>
            assert q.prompt == f"<|im_start|>user\n{q.question}<|im_end|>\n{CHAT_TURN}<think>\n"
            assert q.question.endswith("\n\n" + spec.suffix) and spec.suffix
            assert tokenizer.decode(q.prompt_ids) == q.prompt
            assert q.benchmark == name and q.source.startswith(f"{spec.path}:")
    assert shipped["aime_sample"][0].suffix == shipped["math500_sample"][0].suffix == MATH_SUFFIX
    assert shipped["gpqa_diamond_sample"][0].suffix == MULTIPLE_CHOICE_SUFFIX


def test_benchmark_order_and_selection():
    assert [s.name for s in load_benchmarks()] == list(SHIPPED)
    assert [s.name for s in load_benchmarks(None, ["gpqa_diamond_sample", "aime_sample", "gpqa_diamond_sample"])] == [
        "gpqa_diamond_sample", "aime_sample"]
    with pytest.raises(ValueError, match=r"^benchmarks.yaml: unknown benchmark\(s\) 'aime'; defined: aime_sample, "):
        load_benchmarks(None, ["aime"])


def test_the_shipped_aime_answers_are_right(shipped):
    """Each sample problem solved by brute force, independently of its written solution."""
    divisors = lambda n: [d for d in range(1, n + 1) if n % d == 0]  # noqa: E731
    solved = [
        sum(1 for n in range(1, 1001) if n % 6 == 0 or n % 10 == 0),
        pow(3, 100, 1000),
        next(n + 1 for n in range(2, 100) if (n - 1) ** 2 + n ** 2 + (n + 1) ** 2 == 7805),
        len(divisors(720)),
        sum(math.isqrt(400 + b * b) for b in range(1, 400) if math.isqrt(400 + b * b) ** 2 == 400 + b * b),
        sum(divisors(2 ** 5 * 3 ** 2)) % 1000,
        sum(1 for c in itertools.combinations(range(1, 13), 3) if sum(c) % 3 == 0),
    ]
    questions = shipped["aime_sample"][1]
    assert [q.reference["answer"] for q in questions] == [str(x) for x in solved]
    assert all(0 <= x <= 999 for x in solved) and questions[0].id == "sample-1"


def test_the_shipped_math500_answers_agree_with_their_solutions(shipped):
    records = [json.loads(line) for line in (DATA / "math500_sample.jsonl").read_text().splitlines()]
    questions = shipped["math500_sample"][1]
    assert [q.reference["answer"] for q in questions] == [r["answer"] for r in records]
    assert {"\\frac{1}{2}", "\\sqrt{2}", "(-\\infty,3]", "[1,4) \\cup (4,\\infty)"} <= {r["answer"] for r in records}
    math_accuracy = get_reward("math_accuracy")
    for q, record in zip(questions, records):
        boxed = reference_answer(record["solution"], AnswerFormat.BOXED)
        assert math_accuracy(f"<think>done</think> \\boxed{{{boxed}}}", q.reference) == 1.0, record["unique_id"]
        assert math_accuracy("<think>done</think> \\boxed{12345}", q.reference) == 0.0
        assert q.id == record["unique_id"]


@pytest.mark.parametrize("template", ["raw", "r1_zero"])
def test_other_templates_and_the_think_prefix(shipped, tokenizer, template):
    spec = BenchmarkSpec("aime", shipped["aime_sample"][0].path, "math", template=template,
                         fields={"question": "problem"})
    render = {"raw": lambda q: q, "r1_zero": render_r1_zero}[template]
    assert spec.think_prefix is False  # not by default: R1-Zero writes its own "<think>"; raw prompts are complete
    for q in load_questions(spec, tokenizer):
        assert q.prompt == render(q.question) and q.question.endswith(MATH_SUFFIX)
        assert tokenizer.decode(q.prompt_ids) == q.prompt
    opened = load_questions(dataclasses.replace(spec, think_prefix=True), tokenizer)
    assert all(q.prompt == render(q.question) + "<think>\n" for q in opened)


def test_a_chat_template_that_already_opens_think_is_not_extended(tmp_path, shipped):
    directory = build_chat_tokenizer(tmp_path / "tok")
    config_path = Path(directory) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = config["chat_template"].replace("'<|im_start|>assistant\\n'",
                                                              "'<|im_start|>assistant\\n<think>\\n'")
    config_path.write_text(json.dumps(config))
    for q in load_questions(shipped["math500_sample"][0], load_tokenizer(directory)):
        assert q.prompt.endswith(f"{CHAT_TURN}<think>\n") and q.prompt.count("<think>") == 1


def _choices(question: str) -> dict[str, str]:
    """{letter: text} of the "A) text" lines."""
    return {line[0]: line[3:] for line in question.splitlines() if len(line) > 3 and line[1:3] == ") "}


def test_gpqa_choices_are_shuffled_deterministically_and_the_letter_is_the_correct_one(shipped, tokenizer, tmp_path):
    spec, questions = shipped["gpqa_diamond_sample"]
    with open(DATA / "gpqa_diamond_sample.csv", newline="") as f:
        rows = {row["Record ID"]: row for row in csv.DictReader(f)}
    for q in questions:
        row, choices = rows[q.id], _choices(q.question)
        assert list(choices) == ["A", "B", "C", "D"]
        assert choices[q.reference["answer"]] == row["Correct Answer"].strip()
        assert sorted(choices.values()) == sorted(row[c].strip() for c in ("Correct Answer", "Incorrect Answer 1",
                                                                           "Incorrect Answer 2", "Incorrect Answer 3"))
        assert q.question.startswith(row["Question"].strip() + "\n\nA) ")
    letters = [q.reference["answer"] for q in questions]
    assert letters == ["A", "D", "B", "A", "B", "A"]  # pinned: the documented random.Random(id) shuffle
    assert load_questions(spec, tokenizer) == questions
    # the order follows the id, not the row's position: the rows reversed give each question the same choices
    with open(DATA / "gpqa_diamond_sample.csv", newline="") as f:
        reader = list(csv.reader(f))
    reversed_csv = tmp_path / "reversed.csv"
    with open(reversed_csv, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([reader[0]] + reader[:0:-1])
    flipped = load_questions(dataclasses.replace(spec, path=str(reversed_csv)), tokenizer)
    assert [(q.id, q.question, q.reference) for q in flipped] == [(q.id, q.question, q.reference)
                                                                  for q in reversed(questions)]


def test_choices_given_as_a_list_keep_their_order(tmp_path, tokenizer):
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"q": "Pick two.", "options": ["one", "two", "three"], "label": "b"}) + "\n"
                    + json.dumps({"q": "Pick one.", "options": json.dumps(["one", "two"]), "label": "A"}) + "\n")
    spec = BenchmarkSpec("mc", str(path), "multiple_choice",
                         fields={"question": "q", "choices": "options", "answer": "label"})
    first, second = load_questions(spec, tokenizer)
    assert first.question == f"Pick two.\n\nA) one\nB) two\nC) three\n\n{MULTIPLE_CHOICE_SUFFIX}"
    assert (first.reference, second.reference["answer"], first.id) == ({"answer": "B", "tests": None}, "A", "mc.jsonl:1")
    path.write_text(json.dumps({"q": "Pick.", "options": ["one", "two"], "label": "C"}) + "\n")
    with pytest.raises(DataError, match=r"^.*mc.jsonl:1: field 'label': expected a choice letter A-B, got 'C'$"):
        load_questions(spec, tokenizer)


SOLUTIONS = {
    "sample_a001": "n = int(input())\nprint(sum(x for x in map(int, input().split()) if x % 2 == 0))",
    "sample_a002": "s = input().strip()\nprint('Yes' if s == s[::-1] else 'No')",
    "sample_a003": ("import math\nn = int(input())\nc = 0\nfor d in range(1, math.isqrt(n) + 1):\n"
                    "    if n % d == 0:\n        c += 1 if d * d == n else 2\nprint(c)"),
    "sample_c001": "a, b = map(int, input().split())\nprint(pow(a, b, 10**9 + 7))",
    "sample_l001": ("class Solution:\n    def maxSubarraySum(self, nums: List[int]) -> int:\n"
                    "        best, run = nums[0], 0\n        for x in nums:\n"
                    "            run = max(x, run + x)\n            best = max(best, run)\n        return best"),
    "sample_l002": ("class Solution:\n    def countPrefixWords(self, words: List[str], pref: str) -> int:\n"
                    "        return sum(w.startswith(pref) for w in words)"),
    "sample_l003": ("class Solution:\n    def sortedSquares(self, nums: List[int]) -> List[int]:\n"
                    "        return sorted(x * x for x in nums)"),
}


def _completion(code: str) -> str:
    return f"<think>\nworked it out\n</think>\nHere it is.\n```python\n{code}\n```"


def test_the_shipped_code_tests_pass_a_correct_solution_and_fail_a_wrong_one(shipped):
    code_tests = get_reward("code_tests")
    questions = shipped["livecodebench_sample"][1]
    assert {q.id for q in questions} == set(SOLUTIONS)
    for q in questions:
        assert code_tests(_completion(SOLUTIONS[q.id]), q.reference, scoring="all") == 1.0, q.id
        functional = "Complete this starter code:\n```python\nclass Solution:" in q.question
        assert functional == q.id.startswith("sample_l") and len(q.reference["tests"]) == 3
        name = q.reference["tests"][0].get("func_name")
        wrong = f"class Solution:\n    def {name}(self, *args):\n        return 0" if functional else "print(0)"
        assert code_tests(_completion(wrong), q.reference, scoring="all") == 0.0, q.id
        assert code_tests(_completion(wrong), q.reference) < 1.0


# ---- bad input: one line naming the file and line, or the YAML line and key ---------------------------------


def _yaml(tmp_path, entry: str, name: str = "bench.yaml") -> Path:
    path = tmp_path / name
    path.write_text("benchmarks:\n  b:\n" + "".join(f"    {line}\n" for line in entry.strip().splitlines()))
    return path


def _one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def _data(tmp_path, records, name="q.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_a_missing_field_names_file_line_and_field(tmp_path, tokenizer):
    path = _data(tmp_path, [{"problem": "a", "answer": 1}, {"problem": "b", "answer": 2}, {"problem": "c"}])
    spec = BenchmarkSpec("b", str(path), "math", fields={"question": "problem"})
    with pytest.raises(DataError) as err:
        load_questions(spec, tokenizer)
    assert _one_line(err) == f"{path}:3: field 'answer': missing"
    csv_path = tmp_path / "g.csv"
    csv_path.write_text('Question,Correct Answer,Incorrect Answer 1\n"multi\nline",yes,no\nq2,yes,\n')
    gpqa = BenchmarkSpec("g", str(csv_path), "multiple_choice", fields={
        "question": "Question", "correct": "Correct Answer", "incorrect": ["Incorrect Answer 1"]})
    with pytest.raises(DataError) as err:  # an empty cell is CSV's missing value
        load_questions(gpqa, tokenizer)
    assert _one_line(err) == f"{csv_path}:4: field 'Incorrect Answer 1': missing"
    absent = dataclasses.replace(gpqa, fields=dataclasses.replace(gpqa.fields, incorrect=("Incorrect Answer 2",)))
    with pytest.raises(DataError, match=r"g.csv:2: field 'Incorrect Answer 2': missing$"):
        load_questions(absent, tokenizer)


@pytest.mark.parametrize("records, message", [
    (['{"problem": "a", "answer": 1', {"problem": "b", "answer": 2}], r"q.jsonl:1: malformed JSON at column \d+"),
    ([{"problem": "a", "answer": 1, "n": 7}, {"problem": "b", "answer": 2, "n": 7}],
     r"q.jsonl:2: field 'n': duplicate id '7' \(first on line 1\)$"),
    ([{"problem": "a", "answer": "the answer is 4", "n": 1}],
     r"q.jsonl:1: field 'answer': no closed, non-empty \\boxed\{...\} \(boxed format\) with answer_format=boxed"),
])
def test_bad_records(tmp_path, tokenizer, records, message):
    spec = BenchmarkSpec("b", str(_data(tmp_path, records)), "math", fields={"question": "problem", "id": "n"},
                         answer_format="boxed" if "boxed" in message else "auto")
    with pytest.raises(DataError, match=message) as err:
        load_questions(spec, tokenizer)
    _one_line(err)


def test_bad_code_tests_name_the_record(tmp_path, tokenizer):
    functional = json.dumps([{"input": "[1]", "output": "1", "testtype": "functional"}])
    path = _data(tmp_path, [{"q": "solve", "t": '[{"input": "1", "output": "1"}]'}, {"q": "call f", "t": functional}])
    spec = BenchmarkSpec("c", str(path), "code", fields={"question": "q", "tests": "t"})
    with pytest.raises(DataError) as err:
        load_questions(spec, tokenizer)
    assert _one_line(err).startswith(f"{path}:2: field 't': code tests: item 0 is a functional")
    assert str(err.value).endswith("(set fields.metadata: LiveCodeBench keeps func_name there)")
    _data(tmp_path, [{"q": "solve", "t": "[oops"}])
    with pytest.raises(DataError, match=r"q.jsonl:1: field 't': code tests: not valid JSON"):
        load_questions(spec, tokenizer)


def test_a_missing_data_file_names_the_key_and_the_path(tmp_path):
    yaml_path = _yaml(tmp_path, "path: nowhere/aime.jsonl\nscorer: math")
    with pytest.raises(FileNotFoundError) as err:
        load_benchmarks(yaml_path)
    assert _one_line(err) == f"{yaml_path}: benchmarks.b.path: no such file '{tmp_path}/nowhere/aime.jsonl'"


def test_relative_paths_resolve_against_the_yaml_and_limit_takes_the_first_records(tmp_path, tokenizer):
    _data(tmp_path, [{"question": f"{i}+1=", "answer": i + 1} for i in range(5)], name="add.jsonl")
    (tmp_path / "defs").mkdir()
    yaml_path = _yaml(tmp_path / "defs", "path: ../add.jsonl\nscorer: arithmetic\ntemplate: raw\nthink_prefix: false"
                                         "\nlimit: 2")
    (spec,) = load_benchmarks(str(yaml_path))
    assert spec.path == str(tmp_path / "add.jsonl") and spec.scorer is ScorerName.ARITHMETIC
    questions = load_questions(spec, tokenizer)
    assert [(q.index, q.prompt, q.reference["answer"], q.id) for q in questions] == [
        (0, "0+1=", "1", "add.jsonl:1"), (1, "1+1=", "2", "add.jsonl:2")]


@pytest.mark.parametrize("entry, line, message", [
    ("path: q.jsonl\nscorer: mcq", 4,
     "benchmarks.b.scorer: unknown scorer 'mcq'; known: math, multiple_choice, code, exact, arithmetic"),
    ("path: q.jsonl\nscorer: math\nk: 0", 5, "benchmarks.b.k: must be an integer >= 1, got 0"),
    ("path: q.jsonl\nscorer: math\nk: 16\npass_ks: [4, 32]", 6,
     "benchmarks.b.pass_ks: entries must be distinct integers in 1..16 (the samples per question), got [4, 32]"),
    ("path: q.jsonl\nscorer: math\ncons_k: 65\nk: 64", 5, "benchmarks.b.cons_k: must be in 1..64 (the samples per question) or null, got 65"),
    ("path: q.jsonl\nscorer: code\nfields: {tests: t}\ncons_k: 4", 6,
     "benchmarks.b.cons_k: code answers have no majority vote (no answer is extracted); set null"),
    ("path: q.jsonl\nscorer: code", 2, "benchmarks.b.fields.tests: code benchmarks need the record field holding the "
                                        "test cases"),
    ("path: q.jsonl\nscorer: math\nfields:\n  tests: t", 6,
     "benchmarks.b.fields.tests: only code benchmarks read it (this one is math)"),
    ("path: q.jsonl\nscorer: multiple_choice\nfields:\n  correct: Correct Answer", (6, 5),  # fields.correct, fields
     "benchmarks.b.fields: multiple_choice needs either fields.correct and fields.incorrect (columns, GPQA style) or "
     "fields.choices (a list) with fields.answer (a letter)"),
    ("path: q.jsonl\nscorer: math\nfields:\n  qestion: problem", 6,
     "unknown key 'benchmarks.b.fields.qestion' (did you mean 'question'?)"),
    ("path: q.jsonl\nscorer: math\ntemplate: plain", 5,
     "benchmarks.b.template: expected one of 'r1_zero', 'chat', 'raw', got 'plain'"),
    ("path: q.jsonl\nscorer: math\nname: other", 5, "benchmarks.b.name: the name is the benchmark's key; leave it out"),
])
def test_bad_definitions_name_the_yaml_line_and_key(tmp_path, entry, line, message):
    _data(tmp_path, [{"question": "q", "answer": 1}])
    yaml_path = _yaml(tmp_path, entry)
    with pytest.raises(ConfigError) as err:
        load_benchmarks(yaml_path)
    where = ", ".join(f"{yaml_path}:{n}" for n in (line if isinstance(line, tuple) else (line,)))
    assert _one_line(err) == f"{where}: {message}"


def test_specs_built_in_python_are_validated_too():
    with pytest.raises(ValueError, match=r"^gpqa.scorer: unknown scorer 'mcq'; known: math, "):
        BenchmarkSpec("gpqa", "x.csv", "mcq")
    with pytest.raises(ValueError, match=r"^aime.limit: must be >= 1 or null, got 0$"):
        BenchmarkSpec("aime", "x.jsonl", "math", limit=0)
    with pytest.raises(ValueError, match=r"benchmark name 'a,b' must be"):
        BenchmarkSpec("a,b", "x.jsonl", "math")
    spec = BenchmarkSpec("aime", "x.jsonl", ScorerName.MATH, k=64, pass_ks=(8, 32), cons_k=64, suffix="")
    assert spec.suffix == "" and spec.template is PromptTemplate.CHAT and spec.fields.answer == "answer"
    assert (spec.with_k(16).k, spec.with_k(16).pass_ks, spec.with_k(16).cons_k) == (16, (8,), 16)
