"""Chat responses split R1's <think>...</think> into reasoning_content and content, streamed and whole alike, also
when the prompt already opened <think>; the raw text stays whole in completions."""
import types

import pytest

from r1_megatron.serving.responses import ChatFormat, CompletionFormat
from r1_megatron.serving.sample_text import TextDelta

PIECES = ["<thi", "nk>Let me add: 2", " + 2 = 4.</th", "ink>\n\nThe answer", " is 4."]


def _deltas(pieces):
    for i, piece in enumerate(pieces):
        yield TextDelta(piece, [i], [0.0], [[]], [0], "stop" if i == len(pieces) - 1 else None)


def _job(text: str):
    choice = types.SimpleNamespace(text=text, num_tokens=len(PIECES), finish_reason="stop")
    return types.SimpleNamespace(choices=[choice], prompt_tokens=3, completion_tokens=len(PIECES))


@pytest.mark.parametrize("starts_inside", [False, True])
def test_streamed_and_whole_chat_split_reasoning_alike(starts_inside):
    pieces = ["Let me add: 2"] + PIECES[2:] if starts_inside else PIECES  # R1's template opened <think>
    fmt = ChatFormat("m", 1, None, starts_inside=starts_inside)
    opening = fmt.opening()
    assert opening[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    chunks = [fmt.chunk(0, delta) for delta in _deltas(pieces)]
    deltas = [c["choices"][0]["delta"] for c in chunks if c is not None]
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content", "") for d in deltas)
    assert (reasoning, content) == ("Let me add: 2 + 2 = 4.", "The answer is 4.")
    # no delta mixes the two, and the reasoning all comes first
    kinds = [("reasoning_content" in d, "content" in d) for d in deltas if d]
    assert all(r != c for r, c in kinds) and kinds == sorted(kinds, key=lambda k: k[1])
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    whole = ChatFormat("m", 1, None, starts_inside=starts_inside).response(_job("".join(pieces)))
    message = whole["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == (reasoning, content)
    assert whole["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def test_no_think_tags_no_reasoning_content_and_completions_keep_the_raw_text():
    message = ChatFormat("m", 1, None, starts_inside=False).response(_job("just 4"))["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "just 4"}
    raw = "".join(PIECES)
    assert CompletionFormat("m", 1, None).response(_job(raw))["choices"][0]["text"] == raw
