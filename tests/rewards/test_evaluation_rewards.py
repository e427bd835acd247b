"""The evaluation rewards multiple_choice (letter extraction), exact_answer and think_format on hand-worked cases
and adversarial inputs."""
import time

import pytest

from r1_megatron.rewards.choice_reward import MAX_SCAN_CHARS, choice_reference, extract_choice_letter
from r1_megatron.rewards.registry import get_reward, reward_check, reward_needs
from r1_megatron.rewards.template_format import think_format


@pytest.mark.parametrize("text,letter", [
    # boxed forms
    ("so \\boxed{B}", "B"),
    ("$\\boxed{\\text{C}}$", "C"),
    ("\\boxed{(D)}", "D"),
    ("\\boxed{\\textbf{(A)}}.", "A"),
    ("\\boxed{ b }", "B"),  # a lone letter in a box may be lower case
    ("\\boxed {E.}", "E"),
    ("\\fbox{F}", "F"),
    ("\\boxed{(C) 3.5 m}", "C"),
    ("\\boxed{C. 3.5 m}", "C"),
    ("\\boxed{\\text{C: blue}}", "C"),
    # the last box wins; boxes without a letter are skipped; a box beats a later statement
    ("\\boxed{A} ... on reflection \\boxed{B}", "B"),
    ("\\boxed{B} then the value \\boxed{42}", "B"),
    ("\\boxed{B}. Hence the answer is (C)", "B"),
    ("\\boxed{AB} and the answer is D", "D"),  # two letters are not a letter
    ("\\boxed{x + y}", None),
    ("\\boxed{B", None),  # never closed
    # statements
    ("The answer is (B).", "B"),
    ("the answer is C", "C"),
    ("Answer: D", "D"),
    ("ANSWER:E", "E"),
    ("**Answer:** A", "A"),
    ("Answer: **B**", "B"),
    ("**Answer**: (C)", "C"),
    ("The correct answer is option D.", "D"),
    ("the answer is: $E$", "E"),
    ("The answer is \\textbf{F}", "F"),
    ("Final answer is choice (G)\n", "G"),
    ("answer is (A). Wait, no: the answer is (B)", "B"),  # the last statement
    ("the answer is (B). I answered it.", "B"),  # a later "answer" without a letter is skipped
    # not answers
    ("the answer is a tricky one", None),  # lower case
    ("the answer is Bob", None),  # a letter inside a word
    ("the answer is 42", None),
    ("The answers: A and B are both wrong", None),  # "answers" is not "answer"
    ("I'll answer B", None),  # no "is" or ":"
    ("the answer isn't B", None),
    ("the answer is " + " " * 60 + "B", None),  # further than the window from "answer"
    ("A B C D", None),
    ("", None),
])
def test_extract_choice_letter(text, letter):
    assert extract_choice_letter(text) == letter


def test_extract_choice_letter_never_raises_on_odd_input():
    assert extract_choice_letter(None) is None
    assert extract_choice_letter(b"\\boxed{B}") is None
    assert extract_choice_letter("\ud800 the answer is (C) \udc80") == "C"
    assert extract_choice_letter("\\boxed{\\boxed{B}}") == "B"


def test_only_the_tail_is_scanned():
    assert extract_choice_letter("\\boxed{A}" + "x" * MAX_SCAN_CHARS) is None
    assert extract_choice_letter("\\boxed{A}" + "x" * (MAX_SCAN_CHARS - 9)) == "A"


N = MAX_SCAN_CHARS - 20  # adversarial text the scan reads all of


@pytest.mark.parametrize("text", [
    ("\\boxed{" * N)[:N],
    ("\\boxed{\\text{" * N)[:N],
    ("\\boxed" + "{" * 93) * (N // 100),
    "\\boxed{" + "{" * N,
    "\\boxed{" + "x" * N + "}",
    ("answer" * N)[:N],
    ("answer is (" * N)[:N],
    ("Answer: **" * N)[:N],
    ("the answer is " + " " * 40) * (N // 60),
    "\\boxed{(" + " " * N,
    "\\boxed{B}" + "\\boxed{12}" * 1_000_000,  # 10 MB: only the tail is read
])
def test_extract_choice_letter_is_fast_on_adversarial_input(text):
    start = time.monotonic()
    assert extract_choice_letter(text + "\\boxed{B}") == "B"
    assert extract_choice_letter(text) is None
    assert time.monotonic() - start < 2.0  # ~0.1 s here; quadratic or backtracking scans take minutes


@pytest.mark.parametrize("reference,letter", [("B", "B"), (" b ", "B"), ("(C)", "C"), ("Z", "Z")])
def test_choice_reference(reference, letter):
    assert choice_reference(reference) == letter


@pytest.mark.parametrize("reference", ["Jupiter", "", "AB", "1", None, "Ä"])
def test_choice_reference_rejects_non_letters(reference):
    with pytest.raises(ValueError, match="is not a letter A-Z"):
        choice_reference(reference)


def test_multiple_choice_reward():
    reward = get_reward("multiple_choice")
    assert reward_needs("multiple_choice") == ("answer",)
    sample = {"answer": "b", "tests": None}
    assert reward("The answer is (B).", sample) == 1.0
    assert reward("The answer is (C).", sample) == 0.0
    assert reward("no letter", sample) == 0.0
    with pytest.raises(ValueError, match="'Jupiter' is not a letter"):
        reward("The answer is (B).", {"answer": "Jupiter", "tests": None})
    with pytest.raises(ValueError):
        reward_check("multiple_choice")({"answer": "Jupiter", "tests": None})
    reward_check("multiple_choice")({"answer": "D", "tests": None})


@pytest.mark.parametrize("completion,expected", [
    ("<think>the capital...</think>Paris", 1.0),
    ("<think>a</think>\n  Paris \n", 1.0),
    ("Paris", 1.0),  # no reasoning block: the whole completion is the answer
    ("reasoning</think>Paris", 1.0),  # the think block opened in the prompt
    ("<think>a</think>paris", 0.0),  # case counts
    ("<think>a</think>Paris.", 0.0),
    ("<think>Paris</think>", 0.0),  # nothing after the reasoning
    ("<think>a</think>Paris</think>London", 0.0),  # the last </think> counts
    ("", 0.0),
    (None, 0.0),
])
def test_exact_answer(completion, expected):
    assert get_reward("exact_answer")(completion, {"answer": " Paris ", "tests": None}) == expected


def test_exact_answer_rejects_empty_references():
    for reference in (None, "", "  "):
        with pytest.raises(ValueError, match="is empty"):
            get_reward("exact_answer")("x", {"answer": reference, "tests": None})
        with pytest.raises(ValueError):
            reward_check("exact_answer")({"answer": reference, "tests": None})
    assert reward_needs("exact_answer") == ("answer",)


@pytest.mark.parametrize("completion,expected", [
    ("Let me think.\n</think>\n\nThe answer is 4.", 1.0),
    ("</think>4", 1.0),  # empty reasoning is allowed
    ("reasoning</think>   \n", 0.0),  # nothing after it
    ("reasoning without an end", 0.0),  # truncated inside the block
    ("a</think>b</think>c", 0.0),  # two closes
    ("a</think>b<think>c", 0.0),  # a second block opened
    ("<think>a</think>b", 0.0),  # the block was already open: a further <think>
    ("", 0.0),
    (None, 0.0),
])
def test_think_format(completion, expected):
    assert think_format(completion) == expected
    assert get_reward("think_format")(completion, {"answer": None, "tests": None}) == expected
    assert reward_needs("think_format") == ()


@pytest.mark.parametrize("completion,expected", [
    ("<think>a</think>b", 1.0),
    ("\n <think>a</think>b", 1.0),
    ("a</think>b", 0.0),  # the model must open the block itself
    ("<think>a<think>b</think>c", 0.0),
    ("x<think>a</think>b", 0.0),
])
def test_think_format_when_the_model_opens_the_block(completion, expected):
    assert think_format(completion, think_in_prompt=False) == expected


def test_think_format_on_a_long_completion():
    start = time.monotonic()
    assert think_format("x" * 1_000_000 + "</think>4") == 1.0
    assert think_format("</think>" * 500_000) == 0.0
    assert time.monotonic() - start < 2.0
