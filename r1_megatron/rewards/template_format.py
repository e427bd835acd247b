"""Format rewards: the R1-Zero template's ``<think> ... </think> <answer> ... </answer>`` (``format_reward``) and
a chat model's ``<think> ... </think> answer`` (``think_format``)."""
from __future__ import annotations

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def format_reward(completion: str, *, think_in_prompt: bool = False) -> float:
    """1.0 when the completion is exactly one think block followed by exactly one answer block, else 0.0.

    Whitespace is allowed before, between and after the blocks; any other text outside them fails. Each of the
    four tags must occur exactly once and in order, so a nested or repeated tag fails. With
    ``think_in_prompt=True`` the prompt already ends with ``<think>`` and the completion starts inside the
    block (so the completion must not contain another ``<think>``).
    """
    if not isinstance(completion, str):
        return 0.0
    text = "<think>" + completion if think_in_prompt else completion
    if any(text.count(tag) != 1 for tag in _TAGS):
        return 0.0
    think_open, think_close, answer_open, answer_close = (text.index(tag) for tag in _TAGS)
    if not think_open < think_close < answer_open < answer_close:
        return 0.0
    outside = (
        text[:think_open],
        text[think_close + len("</think>") : answer_open],
        text[answer_close + len("</answer>") :],
    )
    return 1.0 if all(not part.strip() for part in outside) else 0.0


def think_format(completion: str, *, think_in_prompt: bool = True) -> float:
    """1.0 when a chat-template response closes its reasoning once and then answers, else 0.0.

    With ``think_in_prompt=True`` (the prompt ends with ``"<think>\\n"``, so the response starts inside the
    block) the completion must hold exactly one ``</think>``, no ``<think>``, and non-whitespace text after the
    ``</think>``. With ``think_in_prompt=False`` the completion must open the block itself: after leading
    whitespace it starts with ``<think>``, and the rest follows the same rule.
    """
    if not isinstance(completion, str):
        return 0.0
    if not think_in_prompt:
        opened = completion.lstrip()
        if not opened.startswith("<think>"):
            return 0.0
        completion = opened[len("<think>"):]
    if "<think>" in completion or completion.count("</think>") != 1:
        return 0.0
    return 1.0 if completion.partition("</think>")[2].strip() else 0.0
