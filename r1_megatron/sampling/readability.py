"""R1's readability filters for rejection sampling, as pure functions of one response's text.

DeepSeek-R1 (§2.3.3) keeps only correct responses and "filtered out chain-of-thought with mixed languages, long
paragraphs, and code blocks"; it publishes neither thresholds nor detectors, so the rules here are ours
(docs/sampling.md gives the defaults):

- the reasoning part (`split_reasoning`): what the response writes before its first ``</think>``. The chat
  prompt ends inside the think block (``<|im_start|>assistant\\n<think>\\n``), so the response starts with the
  reasoning; an R1-Zero response opens the block itself (`` <think> ...``), and that opening tag is dropped. A
  response that never closes the block is all reasoning, with an empty summary.
- mixed languages (`reasoning_consistency`): the share of the reasoning's words in the target language's scripts,
  with the language-consistency reward's segmentation (rewards/language_reward.py: one CJK character is one word,
  a run of letters of another script is one word). A reasoning without any word has nothing in another language:
  None, which passes (the reward scores it 0, so that an empty reasoning earns nothing).
- long paragraphs (`longest_paragraph_chars`): paragraphs are separated by blank lines; a paragraph's length is
  its characters without surrounding whitespace.
- code blocks (`has_code_block`): a Markdown fence in the reasoning, three backticks anywhere or three tildes at
  the start of a line (a fence written mid-line is still a code block in the model's intent).
- de-duplication (`dedup_key`): exact text, or the normalised text (`normalise_text`: NFKC, case-folded,
  punctuation and symbols as spaces, whitespace collapsed), of the question and the response together.
"""
from __future__ import annotations

import re
import unicodedata

from r1_megatron.rewards.language_reward import LANGUAGE_SCRIPTS, word_scripts

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_TILDE_FENCE = re.compile(r"^[ \t]*~~~", re.MULTILINE)


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, summary) of a response: the text before the first ``</think>`` (without a leading
    ``<think>`` tag) and the text after it, each without surrounding whitespace; ("all of it", "") when the
    block is never closed."""
    head, closed, summary = text.partition(THINK_CLOSE)
    stripped = head.lstrip()
    if stripped.startswith(THINK_OPEN):
        head = stripped[len(THINK_OPEN):]
    return head.strip(), summary.strip() if closed else ""


def reasoning_consistency(reasoning: str, target_language: str) -> float | None:
    """(words in the target language's scripts) / (words) of the reasoning; None when it has no word.
    An unknown language code is a ValueError (a config error)."""
    if target_language not in LANGUAGE_SCRIPTS:
        raise ValueError(f"unknown target language {target_language!r}; known: {', '.join(sorted(LANGUAGE_SCRIPTS))}")
    scripts = word_scripts(reasoning)
    if not scripts:
        return None
    allowed = LANGUAGE_SCRIPTS[target_language]
    return sum(s in allowed for s in scripts) / len(scripts)


def longest_paragraph_chars(reasoning: str) -> int:
    """Characters of the reasoning's longest blank-line-separated paragraph (0 for an empty reasoning)."""
    return max((len(p.strip()) for p in _PARAGRAPH_BREAK.split(reasoning)), default=0)


def has_code_block(reasoning: str) -> bool:
    """Whether the reasoning holds a Markdown code fence: ``` anywhere, or ~~~ at the start of a line."""
    return "```" in reasoning or _TILDE_FENCE.search(reasoning) is not None


def normalise_text(text: str) -> str:
    """The text NFKC-normalised and case-folded, punctuation and symbols (Unicode categories P* and S*) turned
    into spaces, whitespace runs collapsed to one space: "Hello,World!", "hello  world" and "HELLO, WORLD" are
    the same ("hello world")."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    spaced = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in folded)
    return " ".join(spaced.split())


def dedup_key(question: str, response: str, mode: str) -> str | None:
    """What two samples share when they are duplicates under `mode` ("exact", "normalised"; "none": None)."""
    if mode == "none":
        return None
    if mode == "normalised":
        question, response = normalise_text(question), normalise_text(response)
    elif mode != "exact":
        raise ValueError(f"dedup mode must be exact, normalised or none, got {mode!r}")
    return f"{question}\x00{response}"
