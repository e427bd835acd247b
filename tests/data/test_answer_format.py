"""Reference answers as datasets write them (GSM8K '####', MATH \\boxed{}, bare), read into the final answer
math_accuracy compares against; hand-worked values."""
import json

import pytest

from r1_megatron.data import DataError, PromptDataConfig, PromptDataset
from r1_megatron.data.answer_format import AnswerFormat, UnreadableAnswer, reference_answer, resolve_answer_format
from r1_megatron.rewards import get_reward

# GSM8K train, first record (answer field as published)
NATALIA_Q = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How "
             "many clips did Natalia sell altogether in April and May?")
NATALIA_A = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether "
             "in April and May.\n#### 72")
GSM8K, BOXED, RAW, AUTO = AnswerFormat.GSM8K, AnswerFormat.BOXED, AnswerFormat.RAW, AnswerFormat.AUTO


@pytest.mark.parametrize("text, fmt, expected", [
    (NATALIA_A, GSM8K, "72"),
    ("3 * 1,000 = 3,000 dollars\n#### 3,000", GSM8K, "3000"),  # thousands separators go
    ("#### 1,234,567", GSM8K, "1234567"),
    ("#### -12 ", GSM8K, "-12"),
    ("#### 0.5", GSM8K, "0.5"),
    ("first #### 5, then corrected #### 6", GSM8K, "6"),  # the last marker
    ("#### (1,2)", GSM8K, "(1,2)"),  # a comma not followed by exactly 3 digits is not a separator
    ("#### 1,0000", GSM8K, "1,0000"),
    ("so the answer is $\\boxed{\\frac{1}{2}}$.", BOXED, "\\frac{1}{2}"),
    ("\\boxed{2} no, \\boxed{ 3 }", BOXED, "3"),  # the last box, stripped
    ("\\boxed{\\{1,2\\}}", BOXED, "\\{1,2\\}"),
    ("\\fbox{7}", BOXED, "7"),
    ("#### 72", RAW, "#### 72"),
    ("  72 ", RAW, "  72 "),
    (NATALIA_A, AUTO, "72"),
    ("Hence \\boxed{5}.", AUTO, "5"),
    ("5", AUTO, "5"),
    ("\\boxed{3}\n#### 4", AUTO, "4"),  # '####' decides first
    ("\\boxed{3", AUTO, "\\boxed{3"),  # an unclosed box is not a boxed answer: raw
])
def test_reference_answer(text, fmt, expected):
    assert reference_answer(text, fmt) == expected


@pytest.mark.parametrize("text, fmt, problem", [
    ("72", GSM8K, "no '####'"),
    ("72 ####  ", GSM8K, "nothing after the last '####'"),
    ("72", BOXED, "no closed, non-empty \\boxed{...}"),
    ("\\boxed{ }", BOXED, "no closed, non-empty"),
])
def test_unreadable_answers(text, fmt, problem):
    with pytest.raises(UnreadableAnswer) as err:
        reference_answer(text, fmt)
    assert problem in str(err.value)


def test_auto_resolves_per_record():
    assert [resolve_answer_format(t, AUTO) for t in ("a #### 1", "\\boxed{1}", "1")] == [GSM8K, BOXED, RAW]
    assert resolve_answer_format("1", GSM8K) is GSM8K


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


GSM8K_RECORDS = [{"question": NATALIA_Q, "answer": NATALIA_A},
                 {"question": "Weng earns $12 an hour ... How much did she earn?",
                  "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned "
                            "0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"}]
CORRECT = "<think>48/2 = 24 in May, 48 + 24 = 72</think> <answer>\\boxed{72}</answer>"


def test_gsm8k_jsonl_scores_a_correct_boxed_completion(tmp_path):
    """Before answer_format, the reference was the whole solution and this completion scored 0.0."""
    path = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_RECORDS)
    for fmt in ("auto", "gsm8k"):
        ds = PromptDataset(PromptDataConfig(paths=(path,), answer_format=fmt, shuffle=False))
        assert [s.answer for s in ds.samples] == ["72", "10"]
        reward = get_reward("math_accuracy")
        assert reward(CORRECT, ds.samples[0].reward_sample()) == 1.0
        assert reward(CORRECT.replace("72", "73"), ds.samples[0].reward_sample()) == 0.0


def test_auto_says_once_what_it_converted(tmp_path):
    records = GSM8K_RECORDS + [{"question": "q", "answer": "so \\boxed{4}"}, {"question": "q", "answer": "4"}]
    ds = PromptDataset(PromptDataConfig(paths=(write_jsonl(tmp_path / "mixed.jsonl", records),), shuffle=False))
    assert [s.answer for s in ds.samples] == ["72", "10", "4", "4"]
    assert ds.notes() == ["data: answer_format=auto read the reference answer of 2 records as GSM8K (the text after "
                          "the last '####') and of 1 as the last \\boxed{}; set data.answer_format to gsm8k, boxed "
                          "or raw to choose explicitly"]
    plain = PromptDataset(PromptDataConfig(paths=(write_jsonl(tmp_path / "plain.jsonl", records[3:]),)))
    assert plain.notes() == []  # nothing converted: nothing to say
    explicit = PromptDataset(PromptDataConfig(paths=(write_jsonl(tmp_path / "g.jsonl", GSM8K_RECORDS),),
                                              answer_format="gsm8k"))
    assert explicit.notes() == []  # chosen explicitly: nothing to say


def test_an_answer_not_in_the_chosen_format_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "solution": NATALIA_A},
                                              {"question": "q", "solution": "72"}])
    with pytest.raises(DataError) as err:
        PromptDataset(PromptDataConfig(paths=(path,), answer_field="solution", answer_format="gsm8k"))
    assert str(err.value) == (f"{path}:2: field 'solution': no '####' before the final answer (GSM8K format) with "
                              f"answer_format=gsm8k: '72'")
    assert (err.value.line, err.value.field) == (2, "solution")
    with pytest.raises(ValueError, match=r"PromptDataConfig.answer_format must be one of 'auto', 'gsm8k', 'boxed', "
                                         r"'raw', got 'latex'"):
        PromptDataConfig(paths=(path,), answer_format="latex")


def test_unreadable_answers_are_skipped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", GSM8K_RECORDS + [{"question": "q", "answer": "72"}, {"answer": "#### 1"}])
    ds = PromptDataset(PromptDataConfig(paths=(path,), answer_format="gsm8k", on_error="skip"))
    assert len(ds) == 2
    assert ds.stats == {"kept": 2, "skipped_unreadable_answer": 1, "skipped_missing_field": 1}
    assert ds.notes() == ["data: skipped 2 bad records (data.on_error=skip): 1 missing field, 1 unreadable answer"]
