"""Token ids -> text, incrementally, for streamed responses.

Decoding each new token alone is wrong twice over: a byte-level BPE token can hold part of a UTF-8 character
(an emoji or CJK character split over tokens), and a SentencePiece decoder drops a piece's leading "▁" space at
the start of what it decodes. So each step decodes a short window of recent tokens twice, with and without the
new ones, and emits the difference (vLLM's scheme): the window's first tokens give the new ones their context.
"""
from __future__ import annotations

from typing import Protocol, Sequence

# How many prompt tokens open the first window: enough context for a leading space or a merged character.
PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"  # what decoding makes of an incomplete UTF-8 sequence


class Decoder(Protocol):
    """r1_megatron.tokenizer.Tokenizer or a transformers tokenizer: only decode() is used."""

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str: ...


class IncrementalDetokenizer:
    """Text of a growing completion, a delta at a time.

    Contract: the concatenation of every ``add()`` and the final ``flush()`` equals
    ``decode(prompt_ids + ids)[len(decode(prompt_ids)):]`` for the ids added, which is ``decode(ids)`` without a
    prompt (and for byte-level BPE with one): the text the completion adds after its prompt. ``add()`` never
    returns a partial character: while the window's text ends in U+FFFD it holds the text back. Special tokens
    are skipped as the tokenizer marks them (bos/eos/pad/unk, added special tokens); added tokens that are not
    special, such as an R1 distill's ``<think>``, are text.
    """

    def __init__(self, tokenizer: Decoder, prompt_ids: Sequence[int] | None = None,
                 skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        # window = ids[prefix_offset:]; ids[prefix_offset:read_offset] were emitted (or are prompt context)
        self._window = [int(i) for i in (prompt_ids or [])][-PROMPT_CONTEXT_TOKENS:]
        self._read_offset = len(self._window)

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def _delta(self) -> str:
        """Text the window's unread tokens add after its read ones."""
        return self._decode(self._window)[len(self._decode(self._window[:self._read_offset])):]

    def add(self, token_ids: Sequence[int]) -> str:
        """The new text these tokens complete ("" while it ends in a partial character or adds nothing)."""
        self._window.extend(int(i) for i in token_ids)
        delta = self._delta()
        if not delta or delta.endswith(_REPLACEMENT):
            # Nothing read yet: the window grows, so a skipped special token never opens a window (its empty
            # text would hide the next piece's leading space).
            return ""
        self._window = self._window[self._read_offset:]
        self._read_offset = len(self._window)
        return delta

    def flush(self) -> str:
        """Whatever is held back (a trailing partial character decodes to U+FFFD, as decode() does)."""
        delta = self._delta()
        self._window = self._window[self._read_offset:]
        self._read_offset = len(self._window)
        return delta
