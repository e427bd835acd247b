"""Multiple-choice reward: the letter (A-Z) a completion commits to, compared with the reference letter.

The scan is linear in the completion: occurrences of ``\\boxed``/``\\fbox`` and of "answer" are found by
searching for the literal words, and the only other regular expressions run on a bounded window after each
occurrence (no backtracking over unbounded text), so an adversarial completion costs a fraction of a second.
"""
from __future__ import annotations

import re

# An answer is at the end: a 32k-token response is ~130k characters, so scanning the last 200k loses nothing real
# and bounds the work on absurd inputs.
MAX_SCAN_CHARS = 200_000
_BOX_WINDOW = 100  # a boxed letter, even "\boxed{\text{(C) 3.5 m}}", closes within this many characters
_STATEMENT_WINDOW = 48  # the letter of "answer is (X)" / "Answer: **X**" comes within this many characters

_BRACE = re.compile(r"[{}]")
_BOX_MACRO = re.compile(r"\\(?:boxed|fbox)")
_ANSWER_WORD = re.compile("answer", re.IGNORECASE)
_WRAP = r"(?:\\(?:text|textbf|mathrm|mathbf)\s*\{\s*)?"
# the whole box content: a lone letter (any case), optionally in parentheses and/or \text{...}, then "." or "}"
_BOX_LONE_LETTER = re.compile(_WRAP + r"\(?\s*([A-Za-z])\s*\)?\s*\}?\s*\.?\s*")
# or an upper-case letter that labels option text: "(C) 3.5", "C) 3.5", "C. 3.5", "C: 3.5"
_BOX_LABELLED_LETTER = re.compile(_WRAP + r"(?:\(([A-Z])\)|([A-Z])[.:)])\s.*", re.DOTALL)
# right after "answer": "is"/":" (either or both, markdown allowed around), then the letter, not inside a word
_STATEMENT = re.compile(r"[*_\s]*(?:(?i:is)\b(?:[*_\s]*:)?|:)[*_\s$]*" + _WRAP
                        + r"(?:(?i:option|choice)\s+)?\(?([A-Z])\)?(?![A-Za-z0-9])")


def extract_choice_letter(text: str) -> str | None:
    """The letter A-Z the completion commits to, upper case, else None. Never raises (non-strings give None).

    Rules, first that applies (only the last ``MAX_SCAN_CHARS`` characters are read):
    1. The last ``\\boxed{...}`` / ``\\fbox{...}`` whose content is a letter: a lone letter of either case,
       optionally in parentheses, ``\\text{}``/``\\textbf{}``/``\\mathrm{}``/``\\mathbf{}`` and followed by a
       period (``\\boxed{B}``, ``\\boxed{(b)}``, ``\\boxed{\\text{B}}``), or an upper-case letter labelling
       option text (``\\boxed{(C) 3.5}``, ``\\boxed{C. 3.5}``). Boxes holding anything else are skipped.
    2. The last "answer" (any case) followed by "is" and/or ":" (markdown ``*``/``_``, ``$`` and
       whitespace around them), an optional "option"/"choice", then an upper-case letter, optionally in
       parentheses, not followed by a letter or digit: "The answer is (B)", "answer: C", "**Answer:** D",
       "Answer: **A**", "the correct answer is option E.". Lower-case letters are not answers here ("the answer
       is a ..."), and the letter must come within ``_STATEMENT_WINDOW`` characters of "answer".
    3. None.
    Known limit of rule 2: "the answer is A bit ..." reads as A.
    """
    if not isinstance(text, str):
        return None
    text = text[-MAX_SCAN_CHARS:]
    for match in reversed(list(_BOX_MACRO.finditer(text))):
        letter = _boxed_letter(text, match.end())
        if letter is not None:
            return letter
    for match in reversed(list(_ANSWER_WORD.finditer(text))):
        found = _STATEMENT.match(text[match.end() : match.end() + _STATEMENT_WINDOW])
        if found is not None:
            return found.group(1)
    return None


def _boxed_letter(text: str, start: int) -> str | None:
    """The letter in the box whose macro ends at ``start``, None when it holds no letter or does not close
    within ``_BOX_WINDOW`` characters."""
    window = text[start : start + _BOX_WINDOW]
    brace = len(window) - len(window.lstrip(" "))
    if brace >= len(window) or window[brace] != "{":
        return None
    close = _closing_brace(window, brace)
    if close is None:
        return None
    content = window[brace + 1 : close].strip()
    found = _BOX_LONE_LETTER.fullmatch(content) or _BOX_LABELLED_LETTER.fullmatch(content)
    if found is None:
        return None
    return next(g for g in found.groups() if g is not None).upper()


def _closing_brace(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx`` (nested braces allowed), None when it does not close."""
    depth = 0
    for brace in _BRACE.finditer(text, open_idx):
        depth += 1 if brace.group() == "{" else -1
        if depth == 0:
            return brace.start()
    return None


def choice_reference(reference) -> str:
    """The reference answer as an upper-case letter A-Z ("b", " (B) " -> "B"); ValueError when it is not one."""
    letter = str(reference).strip().strip("()").strip().upper() if reference is not None else ""
    if len(letter) != 1 or not "A" <= letter <= "Z":
        raise ValueError(f"the answer {reference!r} is not a letter A-Z")
    return letter


def multiple_choice(completion: str, reference) -> float:
    """1.0 when the completion's letter (``extract_choice_letter``) is the reference letter, else 0.0.
    A reference that is not a letter is a data error (ValueError, see ``choice_reference``)."""
    expected = choice_reference(reference)
    return 1.0 if extract_choice_letter(completion) == expected else 0.0
