"""Find the final answer in a model completion: the last ``\\boxed{...}``, else the last ``<answer>`` block.

Every scan is linear in the text: one regex pass finds the macros, one pass over the braces matches them with
a stack, and each candidate box is then checked in O(1) from the end. (Matching each ``\\boxed{`` on its own
was quadratic: 56 KB of unclosed ``\\boxed{`` took 9 s.) ``extract_final_answer`` reads only the last
``SEARCH_CHARS`` characters, which bounds the work whatever the completion's length.
"""
from __future__ import annotations

import re

# The final answer is at the end; 64 KiB is ~16K tokens of tail, far more than any answer and its wrap-up, and
# scanning it costs milliseconds. A completion longer than that is searched in its last SEARCH_CHARS only.
SEARCH_CHARS = 64 * 1024
_MACRO = re.compile(r"\\(?:boxed|fbox)")
_BRACE = re.compile(r"[{}]")
_SPACES = re.compile(r" *")
_BARE_TOKEN = re.compile(r"[^\s$.,]*")  # "\boxed 5": up to whitespace, "$", "." or ","
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
_THINK_CLOSE = "</think>"


def matching_braces(text: str) -> dict[int, int]:
    """{index of each ``{`` that closes: index of its ``}``}, nested braces allowed; one pass with a stack (an
    unmatched ``}`` is skipped, an unclosed ``{`` has no entry)."""
    open_at: list[int] = []
    close_of: dict[int, int] = {}
    for brace in _BRACE.finditer(text):
        if brace.group() == "{":
            open_at.append(brace.start())
        elif open_at:
            close_of[open_at.pop()] = brace.start()
    return close_of


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) whose braces close, else None.

    ``\\boxed 5`` (no braces, one token) is accepted too since models write it and LaTeX renders it.
    """
    macros = [m.end() for m in _MACRO.finditer(text)]
    if not macros:
        return None
    close_of = matching_braces(text)
    for start in reversed(macros):
        content = _boxed_content_at(text, start, close_of)
        if content is not None:
            return content
    return None


def _boxed_content_at(text: str, start: int, close_of: dict[int, int]) -> str | None:
    i = _SPACES.match(text, start).end()
    if i == len(text):
        return None
    if text[i] == "{":
        close = close_of.get(i)
        return None if close is None else text[i + 1 : close]
    if i > start:  # "\boxed 5": a single bare token
        return text[i : _BARE_TOKEN.match(text, i).end()] or None
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


def extract_final_answer(text: str, *, search_chars: int = SEARCH_CHARS) -> str | None:
    """The answer the completion commits to: last boxed content, else the answer tag's content, else None;
    both looked for in the last ``search_chars`` (>= 1) characters of ``text``.

    A boxed answer inside the ``<answer>`` block is found by the first rule, so "<answer>\\boxed{2}</answer>"
    gives "2". Empty or whitespace-only answers count as no answer.
    """
    tail = text[-search_chars:]
    for found in (last_boxed(tail), answer_tag_content(tail)):
        if found is not None and found.strip():
            return found.strip()
    return None


def answer_after_think(text: str) -> str | None:
    """The text after the last ``</think>`` (the whole text when there is none), stripped; None when empty."""
    return text.rpartition(_THINK_CLOSE)[2].strip() or None
