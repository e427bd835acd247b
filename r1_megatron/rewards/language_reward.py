"""Language-consistency reward (R1 stage-1 RL): share of chain-of-thought words in the target language."""
from __future__ import annotations

import re

# Segmentation rule (R1 does not publish one): a "word" is either ONE character of a CJK script (Han ideograph,
# Hiragana, Katakana or Hangul syllable; these scripts do not separate words by spaces, so one character is the
# unit) or a maximal run of letters of one other script (Latin incl. accented letters, Cyrillic, Greek, Arabic,
# Hebrew, Devanagari, Thai; any other letters form an "other" word). Digits, punctuation, math symbols and
# whitespace are not words. The language is judged by script only: English and French are both "Latin".
_SCRIPT_RANGES = {
    "han": "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff",
    "kana": "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff",
    "hangul": "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f",
    "latin": "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff",
    "cyrillic": "\u0400-\u04ff",
    "greek": "\u0370-\u03ff",
    "arabic": "\u0600-\u06ff",
    "hebrew": "\u0590-\u05ff",
    "devanagari": "\u0900-\u097f",
    "thai": "\u0e00-\u0e7f",
}
_SINGLE_CHAR_SCRIPTS = ("han", "kana", "hangul")
_WORD_RE = re.compile(
    "|".join(f"(?P<{s}>[{_SCRIPT_RANGES[s]}])" for s in _SINGLE_CHAR_SCRIPTS)
    + "|"
    + "|".join(f"(?P<{s}>[{r}]+)" for s, r in _SCRIPT_RANGES.items() if s not in _SINGLE_CHAR_SCRIPTS)
    + "|(?P<other>[^\\W\\d_]+)"
)

LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    "en": frozenset({"latin"}),
    "fr": frozenset({"latin"}),
    "de": frozenset({"latin"}),
    "es": frozenset({"latin"}),
    "zh": frozenset({"han"}),
    "ja": frozenset({"han", "kana"}),
    "ko": frozenset({"hangul", "han"}),
    "ru": frozenset({"cyrillic"}),
    "el": frozenset({"greek"}),
    "ar": frozenset({"arabic"}),
    "he": frozenset({"hebrew"}),
    "hi": frozenset({"devanagari"}),
    "th": frozenset({"thai"}),
}


def chain_of_thought(text: str) -> str:
    """The ``<think>`` block's content when there is one (an unclosed block runs to the end), else the text."""
    start = text.find("<think>")
    start = 0 if start == -1 else start + len("<think>")
    end = text.find("</think>", start)
    return text[start:] if end == -1 else text[start:end]


def word_scripts(text: str) -> list[str]:
    """The script of every word in ``text`` under the segmentation rule above, in order."""
    return [m.lastgroup for m in _WORD_RE.finditer(text)]


def language_consistency(text: str, target_language: str = "en") -> float:
    """(words of the chain of thought in the target language's scripts) / (words in the chain of thought).

    The chain of thought is the ``<think>`` block (see ``chain_of_thought``). A text with no words scores 0.0.
    Unknown ``target_language`` codes raise ValueError (that is a config error, not model output).
    """
    if target_language not in LANGUAGE_SCRIPTS:
        raise ValueError(f"language_consistency: unknown target_language {target_language!r}; "
                         f"known: {sorted(LANGUAGE_SCRIPTS)}")
    if not isinstance(text, str):
        return 0.0
    scripts = word_scripts(chain_of_thought(text))
    if not scripts:
        return 0.0
    allowed = LANGUAGE_SCRIPTS[target_language]
    return sum(s in allowed for s in scripts) / len(scripts)
