"""Find the final answer in a model completion: the last ``\\boxed{...}``, else the last ``<answer>`` block.

Both scanners are single linear passes (no backtracking regex), so a 1 MB completion or 100k nested braces
costs milliseconds, not a timeout.
"""
from __future__ import annotations

_BOXED = ("\\boxed", "\\fbox")
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
_THINK_CLOSE = "</think>"


def _balanced_group(text: str, open_idx: int) -> str | None:
    """Content of the brace group whose ``{`` is at ``open_idx`` (nested braces allowed), None when unclosed."""
    depth = 0
    for i in range(open_idx, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_idx + 1 : i]
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) whose braces close, else None.

    ``\\boxed 5`` (no braces, one token) is accepted too since models write it and LaTeX renders it.
    """
    best_pos, best = -1, None
    for macro in _BOXED:
        pos = text.rfind(macro)
        while pos != -1 and pos > best_pos:
            content = _boxed_content_at(text, pos + len(macro))
            if content is not None:
                best_pos, best = pos, content
                break
            pos = text.rfind(macro, 0, pos)
    return best


def _boxed_content_at(text: str, start: int) -> str | None:
    i = start
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        return _balanced_group(text, i)
    if i > start and i < len(text):  # "\boxed 5": a single bare token
        end = i
        while end < len(text) and not text[end].isspace() and text[end] not in "$.,":
            end += 1
        return text[i:end] or None
    return None


def answer_tag_content(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` block, else None."""
    close = text.rfind(_ANSWER_CLOSE)
    if close == -1:
        return None
    open_ = text.rfind(_ANSWER_OPEN, 0, close)
    if open_ == -1:
        return None
    return text[open_ + len(_ANSWER_OPEN) : close]


def extract_final_answer(text: str) -> str | None:
    """The answer the completion commits to: last boxed content, else the answer tag's content, else None.

    A boxed answer inside the ``<answer>`` block is found by the first rule, so "<answer>\\boxed{2}</answer>"
    gives "2". Empty or whitespace-only answers count as no answer.
    """
    for found in (last_boxed(text), answer_tag_content(text)):
        if found is not None and found.strip():
            return found.strip()
    return None


def answer_after_think(text: str) -> str | None:
    """The text after the last ``</think>`` (the whole text when there is none), stripped; None when empty."""
    return text.rpartition(_THINK_CLOSE)[2].strip() or None
