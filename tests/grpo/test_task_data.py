"""A run's prompt data from files: answer formats, code tests, the reward/field cross-check at config load, and
the start-up notes and warnings (converted answers, skipped records, references a reward cannot read)."""
import json
import time

import pytest

from r1_megatron.data.records import DataError
from r1_megatron.data.synthetic import build_arithmetic_tokenizer
from r1_megatron.grpo.task import build_task
from r1_megatron.rewards import get_reward, register_reward
from r1_megatron.rewards.reference_check import check_references, evenly_spaced
from r1_megatron.run_config import ConfigError, load_run_config
from tests.data.test_answer_format import CORRECT, GSM8K_RECORDS, write_jsonl

MATH = ["rewards.weights={math_accuracy: 1.0, format: 1.0}", "rewards.accuracy=math_accuracy",
        "rewards.format=format", "data.synthetic=null", "data.template=r1_zero", "warm_start.max_steps=0"]
ADD_PROGRAM = ("<think>read two ints</think> <answer>\n```python\na, b = map(int, input().split())\nprint(a + b)\n"
               "```\n</answer>")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_arithmetic_tokenizer(tmp_path_factory.mktemp("tok"))


def task(tmp_path, tokenizer, overrides):
    cfg = load_run_config(None, [f"run_dir={tmp_path / 'run'}", f"data.tokenizer={tokenizer}", *overrides])
    lines = []
    return build_task(cfg, say=lines.append), lines


def test_gsm8k_file_to_a_scored_completion_with_one_note(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_RECORDS)
    t, lines = task(tmp_path, tokenizer, MATH + [f"data.paths=[{path}]"])
    assert sorted(s.answer for s in t.dataset.samples) == ["10", "72"]
    natalia = next(s for s in t.dataset.samples if s.answer == "72")
    assert get_reward("math_accuracy")(CORRECT, natalia.reward_sample()) == 1.0
    assert len(lines) == 1 and lines[0].startswith("data: answer_format=auto read the reference answer of 2 records "
                                                   "as GSM8K"), lines


def test_references_math_verify_cannot_parse_get_one_warning(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_RECORDS)
    _, lines = task(tmp_path, tokenizer, MATH + [f"data.paths=[{path}]", "data.answer_format=raw"])
    assert lines == [f"warning: math_accuracy cannot use the answer of 2 of the 2 records checked (100%), so it "
                     f"scores 0 on them; first: {path}:1: 'Natalia sold 48/2 = <<48/2=24>>24 clips in May. Natalia "
                     f"sold 48+24 = <<48+24=...': math-verify finds no math expression in it; check "
                     f"data.answer_field and data.answer_format (gsm8k, boxed, raw)"]


@pytest.mark.parametrize("bad, warned", [(0, False), (1, False), (2, True)])
def test_the_warning_needs_a_tenth_of_the_references(tmp_path, tokenizer, bad, warned):
    records = [{"question": f"q{i}", "answer": "She sold 72 clips." if i < bad else str(i)} for i in range(20)]
    _, lines = task(tmp_path, tokenizer, MATH + [f"data.paths=[{write_jsonl(tmp_path / 'd.jsonl', records)}]"])
    assert len(lines) == warned
    if warned:
        assert "cannot use the answer of 2 of the 20 records checked (10%)" in lines[0]


def test_reference_check_is_bounded():
    assert evenly_spaced(list(range(10)), 4) == [0, 2, 5, 7]
    samples = [(f"f:{i}", {"answer": str(i), "tests": None}) for i in range(2000)]
    start = time.monotonic()
    [result] = check_references(["math_accuracy", "format"], samples)
    assert (result.reward, result.checked, result.failed) == ("math_accuracy", 500, 0)
    assert time.monotonic() - start < 5.0 + 1.0  # the budget

    @register_reward("test_slow_check", check=lambda sample: time.sleep(0.02))
    def slow(completion, sample):
        return 0.0

    [result] = check_references(["test_slow_check"], samples, budget_s=0.1)
    assert 1 <= result.checked < 20


def code_records(tmp_path):
    return write_jsonl(tmp_path / "code.jsonl", [
        {"prompt": "Read two integers a and b from one line; print a + b.",
         "tests": {"inputs": ["1 2\n", "5 0\n"], "outputs": ["3\n", "5\n"]}},
        {"prompt": "Write add(a, b).", "tests": json.dumps(["assert add(1, 2) == 3"])}])


CODE = ["data.synthetic=null", "warm_start.max_steps=0", "rewards.weights={code_tests: 1.0}", "rewards.accuracy=code_tests",
        "data.question_field=prompt", "data.answer_field=null"]


def test_code_records_with_tests_from_the_data_config(tmp_path, tokenizer):
    t, lines = task(tmp_path, tokenizer, CODE + [f"data.paths=[{code_records(tmp_path)}]", "data.tests_field=tests"])
    assert len(lines) == 1 and lines[0].startswith("code_tests sandbox: ")  # which Python runs the code, no warning
    by_prompt = {s.question: s for s in t.dataset.samples}
    stdio = by_prompt["Read two integers a and b from one line; print a + b."]
    assert stdio.reward_sample()["answer"] is None
    assert get_reward("code_tests")(ADD_PROGRAM, stdio.reward_sample()) == 1.0
    assert get_reward("code_tests")(ADD_PROGRAM.replace("a + b", "a - b"), stdio.reward_sample()) == 0.5  # 5 - 0 only
    add = "```python\ndef add(a, b):\n    return a + b\n```"
    assert get_reward("code_tests")(add, by_prompt["Write add(a, b)."].reward_sample()) == 1.0


def test_tests_code_tests_cannot_read_stop_the_run_at_load(tmp_path, tokenizer):
    # checked by code_tests' own parser when the dataset is built (tests/adversarial/test_data_files.py has more)
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "tests": {"cases": [1]}}])
    with pytest.raises(DataError, match=r"^.*c.jsonl:1: field 'tests': code tests: expected a non-empty list or an "
                                        r"inputs/outputs dict, got dict$"):
        task(tmp_path, tokenizer, CODE + [f"data.paths=[{path}]", "data.tests_field=tests"])


def test_skipped_records_are_reported_once(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "g.jsonl", GSM8K_RECORDS + [{"question": "q"}, {"question": "q", "answer": "7"}])
    t, lines = task(tmp_path, tokenizer, MATH + [f"data.paths=[{path}]", "data.on_error=skip",
                                                 "data.answer_format=gsm8k"])
    assert len(t.dataset) == 2
    assert lines == ["data: skipped 2 bad records (data.on_error=skip): 1 missing field, 1 unreadable answer"]


@pytest.mark.parametrize("overrides, message", [
    (CODE + ["data.paths=[c.jsonl]"], "rewards.weights has code_tests, which reads each record's tests: set "
                                      "data.tests_field"),
    (MATH + ["data.paths=[c.jsonl]", "data.answer_field=null"],
     "command line: rewards.weights has math_accuracy, which reads each record's answer: set data.answer_field"),
    (["rewards.weights={code_tests: 1.0}", "rewards.accuracy=null"],
     "rewards.weights has code_tests, which reads each record's tests: the synthetic arithmetic task has no tests"),
    (["data.answer_format=latex"], "data.answer_format: expected one of 'auto', 'gsm8k', 'boxed', 'raw', got 'latex'"),
    (["data.on_error=ignore"], "data.on_error: expected one of 'raise', 'skip', got 'ignore'"),
    (["rewards.max_failed_steps=-1"], "rewards.max_failed_steps must be >= 0 (0: never stop), got -1"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_run_config(None, overrides)
    assert message in str(err.value)


def test_the_cross_check_names_the_recipe_lines(tmp_path):
    recipe = tmp_path / "code.yaml"
    recipe.write_text("data:\n  paths: [c.jsonl]\n  answer_field: null\nrewards:\n  weights: {code_tests: 1.0}\n"
                      "  accuracy: code_tests\n  format: null\nwarm_start:\n  max_steps: 0\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(recipe)
    # the line of rewards.weights, and of the data section where data.tests_field belongs
    assert str(err.value) == (f"{recipe}:5, {recipe}:1: rewards.weights has code_tests, which reads each record's "
                              f"tests: set data.tests_field")


def test_plugin_rewards_declare_the_fields_they_read(tmp_path):
    @register_reward("test_needs_tests", needs=("tests",))
    def needs_tests(completion, sample):
        return float(bool(sample["tests"]))

    with pytest.raises(ConfigError, match="rewards.weights has test_needs_tests, which reads each record's tests"):
        load_run_config(None, ["data.synthetic=null", "data.paths=[c.jsonl]", "rewards.accuracy=null", "warm_start.max_steps=0",
                               "rewards.weights={test_needs_tests: 1.0}"])
    with pytest.raises(ValueError, match=r"needs=\('question',\) must list sample fields of \('answer', 'tests'\)"):
        register_reward("test_needs_question", needs=("question",))
