"""Format reward for the R1-Zero template: ``<think> ... </think> <answer> ... </answer>``."""
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
