"""math_accuracy on hand-written cases (expected values worked by hand) and adversarial inputs (more in
tests/adversarial/test_math_and_runner.py)."""
import random
import time

import pytest

from r1_megatron.rewards import math_accuracy
from r1_megatron.rewards.answer_extraction import extract_final_answer, last_boxed

B = "\\boxed"

# (completion, ground truth, expected)
CASES = [
    # equivalent numeric forms
    (f"so {B}{{0.5}}", "1/2", 1.0),
    (f"{B}{{\\frac{{1}}{{2}}}}", "0.5", 1.0),
    (f"{B}{{\\dfrac12}}", "\\frac{1}{2}", 1.0),
    (f"{B}{{\\tfrac{{1}}{{2}}}}", "0.5", 1.0),
    (f"{B}{{1/2}}", "\\frac{2}{4}", 1.0),
    (f"{B}{{0.50}}", "1/2", 1.0),
    (f"{B}{{50\\%}}", "\\frac{1}{2}", 1.0),
    (f"{B}{{25\\%}}", "0.25", 1.0),
    (f"{B}{{3}}", "3", 1.0),
    (f"{B}{{3.0}}", "3", 1.0),
    (f"{B}{{-7}}", "-7", 1.0),
    (f"{B}{{1,000}}", "1000", 1.0),
    (f"{B}{{\\sqrt{{2}}/2}}", "\\frac{\\sqrt{2}}{2}", 1.0),
    (f"{B}{{\\frac{{1}}{{\\sqrt{{2}}}}}}", "\\frac{\\sqrt{2}}{2}", 1.0),
    (f"{B}{{2\\sqrt{{3}}}}", "\\sqrt{12}", 1.0),
    (f"{B}{{\\pi}}", "\\pi", 1.0),
    (f"{B}{{2\\pi}}", "2\\pi", 1.0),
    (f"{B}{{\\frac{{\\pi}}{{2}}}}", "\\pi/2", 1.0),
    (f"{B}{{e^{{2}}}}", "e^2", 1.0),
    (f"{B}{{10^{{3}}}}", "1000", 1.0),
    (f"{B}{{2^{{10}}}}", "1024", 1.0),
    (f"{B}{{\\binom{{5}}{{2}}}}", "10", 1.0),
    (f"{B}{{5!}}", "120", 1.0),
    (f"{B}{{10\\text{{ cm}}}}", "10", 1.0),
    (f"{B}{{90^\\circ}}", "90", 1.0),
    # expressions, equations
    (f"{B}{{x^2+2x+1}}", "(x+1)^2", 1.0),
    (f"{B}{{2x+2}}", "2(x+1)", 1.0),
    (f"{B}{{x=3}}", "3", 1.0),
    (f"{B}{{\\frac{{x}}{{2}}}}", "0.5x", 1.0),
    (f"{B}{{a+b}}", "b+a", 1.0),
    # intervals, sets, tuples, matrices
    (f"{B}{{[1,2)}}", "[1,2)", 1.0),
    (f"{B}{{(1, 2]}}", "(1,2]", 1.0),
    (f"{B}{{(-\\infty, 3)}}", "(-\\infty,3)", 1.0),
    (f"{B}{{\\{{1,2,3\\}}}}", "\\{3,2,1\\}", 1.0),
    (f"{B}{{1, 2}}", "\\{1,2\\}", 1.0),
    (f"{B}{{\\begin{{pmatrix}}1&2\\\\3&4\\end{{pmatrix}}}}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", 1.0),
    (f"{B}{{\\begin{{bmatrix}}1\\\\2\\end{{bmatrix}}}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", 1.0),
    # where the answer is found: nested braces, last box wins, answer tag
    (f"{B}{{\\frac{{\\sqrt{{3}}}}{{2}}}}", "\\frac{\\sqrt{3}}{2}", 1.0),
    (f"{B}{{{{{{7}}}}}}", "7", 1.0),
    (f"first {B}{{5}}, then corrected: {B}{{6}}", "6", 1.0),
    (f"first {B}{{6}}, then corrected: {B}{{5}}", "6", 0.0),
    ("<think>it is 4</think> <answer>12</answer>", "12", 1.0),
    ("<think>hmm</think><answer> 1/3 </answer>", "\\frac13", 1.0),
    (f"<think>t</think><answer>{B}{{9}}</answer>", "9", 1.0),
    (f"<answer>3</answer> but the box says {B}{{4}}", "4", 1.0),
    (f"<answer>3</answer> but the box says {B}{{4}}", "3", 0.0),
    ("$\\fbox{8}$", "8", 1.0),
    (f"{B} 5", "5", 1.0),
    # wrong answers
    (f"{B}{{3}}", "4", 0.0),
    (f"{B}{{0.5}}", "0.51", 0.0),
    (f"{B}{{\\frac{{1}}{{3}}}}", "0.3", 0.0),
    (f"{B}{{-3}}", "3", 0.0),
    (f"{B}{{x+1}}", "x-1", 0.0),
    (f"{B}{{[1,2]}}", "(1,2)", 0.0),
    (f"{B}{{\\{{1,2\\}}}}", "\\{1,2,3\\}", 0.0),
    (f"{B}{{\\begin{{pmatrix}}1&2\\\\3&4\\end{{pmatrix}}}}", "\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}", 0.0),
    (f"{B}{{\\sqrt{{2}}}}", "1.41", 0.0),
    (f"{B}{{2\\pi}}", "\\pi", 0.0),
    # no answer at all
    ("The answer is 5.", "5", 0.0),
    ("", "5", 0.0),
    (f"{B}{{}}", "5", 0.0),
    ("<answer></answer>", "5", 0.0),
    ("<answer>5", "5", 0.0),
    (f"{B}{{5", "5", 0.0),
    # LaTeX that does not parse
    (f"{B}{{\\frac{{1}}{{}}}}", "1/2", 0.0),
    (f"{B}{{\\begin{{pmatrix}}1&2}}", "1", 0.0),
    (f"{B}{{)(}}", "1", 0.0),
    (f"{B}{{@#%}}", "1", 0.0),
]


def test_at_least_sixty_cases():
    assert len(CASES) >= 60
    assert {c[2] for c in CASES} == {0.0, 1.0}


@pytest.mark.parametrize("completion,truth,expected", CASES)
def test_math_accuracy_case(completion, truth, expected):
    assert math_accuracy(completion, truth) == expected


def test_extraction_nested_and_last():
    assert last_boxed("\\boxed{\\frac{a}{b}} and \\boxed{{x}+{y}}") == "{x}+{y}"
    assert last_boxed("\\boxed{unclosed \\boxed{2}") == "2"
    assert extract_final_answer("<answer> 42 </answer>") == "42"
    assert extract_final_answer("no answer here") is None


def reference_last_boxed(text):
    """The definition, checked one candidate at a time from the end (quadratic): the last macro whose content
    is a brace group that closes, or one bare token after spaces."""
    for pos in range(len(text) - 1, -1, -1):
        macro = next((m for m in ("\\boxed", "\\fbox") if text.startswith(m, pos)), None)
        if macro is None:
            continue
        start = i = pos + len(macro)
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return text[i + 1 : j]
        elif start < i < len(text):
            end = i
            while end < len(text) and not text[end].isspace() and text[end] not in "$.,":
                end += 1
            if end > i:
                return text[i:end]
    return None


def test_last_boxed_matches_the_definition_on_random_text():
    pieces = ["\\boxed", "\\fbox", "\\boxe", "{", "}", " ", "x", "5", "$", ".", ",", "\n"]
    rng = random.Random(0)
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        assert last_boxed(text) == reference_last_boxed(text), text


def _timed(fn, *args):
    """(result, CPU seconds): the limits count CPU time, so a loaded machine does not change the figure."""
    start = time.process_time()
    out = fn(*args)
    return out, time.process_time() - start


def test_power_tower_times_out_to_zero():
    score, seconds = _timed(math_accuracy, "\\boxed{9^{9^{9^{9^{9}}}}}", "1")
    assert score == 0.0 and seconds < 5.0


def test_one_megabyte_completion():
    text = ("Let me think about this step by step. " * 28000)[:1_000_000] + "\\boxed{42}"
    assert len(text) > 1_000_000
    assert _timed(math_accuracy, text, "42")[0] == 1.0
    score, seconds = _timed(math_accuracy, "x" * 1_000_000, "42")
    assert score == 0.0 and seconds < 5.0


def test_deeply_nested_braces():
    depth = 100_000
    score, seconds = _timed(math_accuracy, "\\boxed{" + "{" * depth + "1" + "}" * depth + "}", "1")
    assert score == 0.0 and seconds < 5.0  # longer than MAX_ANSWER_CHARS: not an answer
    score, seconds = _timed(math_accuracy, "\\boxed{" + "{" * depth, "1")  # never closed
    assert score == 0.0 and seconds < 5.0
    assert math_accuracy("\\boxed{" + "{" * 300 + "1" + "}" * 300 + "}", "1") in (0.0, 1.0)


def test_invalid_surrogates():
    assert math_accuracy("\\boxed{\ud800\udfff\udc00}", "1") == 0.0
    assert math_accuracy("\ud800 text \\boxed{7} \udc80", "7") == 1.0


def test_non_string_inputs_score_zero():
    assert math_accuracy(None, "1") == 0.0
    assert math_accuracy(b"\\boxed{1}", "1") == 0.0


def test_works_off_the_main_thread():
    """math-verify's own timeout uses signals and raises off the main thread; ours must not."""
    import threading

    out = []
    thread = threading.Thread(target=lambda: out.append(math_accuracy("\\boxed{\\frac{2}{4}}", "0.5")))
    thread.start()
    thread.join(30)
    assert out == [1.0]
