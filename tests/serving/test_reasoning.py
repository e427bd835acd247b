"""ReasoningParser over every split of a text against split_reasoning of the whole text (a separate, str.partition
implementation), and split_reasoning against hand-written expectations."""
import itertools

import pytest

from r1_megatron.serving.reasoning import ReasoningParser, prompt_opens_think, split_reasoning

# (text, starts_inside) -> (reasoning, content), written by hand
EXPECTED = [
    (("<think>a</think>b", False), ("a", "b")),
    (("<think>\nLet me add: 2+2=4.\n</think>\n\n  The answer is 4.", False),
     ("\nLet me add: 2+2=4.\n", "The answer is 4.")),
    (("The answer is 4.", False), (None, "The answer is 4.")),                   # no tags: all content
    (("2+2=4 so</think>\n4", True), ("2+2=4 so", "4")),                          # R1: the prompt opened <think>
    (("still thinking <thi", True), ("still thinking <thi", "")),                # unclosed: all reasoning
    (("<think>unclosed", False), ("unclosed", "")),
    (("x<think>r</think> y</think><think>z", False), ("r", "xy</think><think>z")),  # one block; later tags: text
    (("a </thin b < think>", False), (None, "a </thin b < think>")),             # near misses are text
    (("<think></think>", False), ("", "")),
    (("", True), ("", "")),
]


@pytest.mark.parametrize("case,expected", EXPECTED)
def test_split_reasoning(case, expected):
    assert split_reasoning(*case) == expected


def stream(chunks, starts_inside):
    parser = ReasoningParser(starts_inside=starts_inside)
    parts = [parser.add(c) for c in chunks] + [parser.flush()]
    return "".join(r for r, _ in parts), "".join(c for _, c in parts)


@pytest.mark.parametrize("case,expected", EXPECTED)
def test_every_split_matches_whole_text(case, expected):
    text, starts_inside = case
    reasoning, content = split_reasoning(text, starts_inside)
    cuts = 2 if len(text) <= 40 else 1
    for n in range(cuts + 1):
        for points in itertools.combinations(range(1, len(text)), n):
            bounds = (0, *points, len(text))
            chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
            assert stream(chunks, starts_inside) == (reasoning or "", content), chunks


def test_streams_reasoning_before_the_end_tag_arrives():
    parser = ReasoningParser(starts_inside=True)
    assert parser.add("Let me see </thi") == ("Let me see ", "")  # "</thi" held: it may be the end tag
    assert parser.add("nk>\n") == ("", "")                          # the newline after it is dropped
    assert parser.add("\n 4") == ("", "4")
    assert parser.add(" <think>") == ("", " <think>")                # after the block everything is content
    plain = ReasoningParser()
    assert plain.add("a <") == ("", "a ") and plain.flush() == ("", "<")


def test_prompt_opens_think():
    assert prompt_opens_think("<|User|>2+2?<|Assistant|><think>\n")
    assert not prompt_opens_think("<think>old</think> new question")
    assert not prompt_opens_think("no tags")
    assert prompt_opens_think("<think>a</think><think>")


def test_bad_tags_named():
    with pytest.raises(ValueError, match="start, end"):
        ReasoningParser(start="")
