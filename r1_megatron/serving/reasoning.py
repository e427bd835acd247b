"""R1-style reasoning: the text inside ``<think>...</think>`` is ``reasoning_content``, the rest ``content``
(DeepSeek's API). The completion may start inside the block when the prompt opened it (R1's chat template ends
with ``<think>\\n``): then only ``</think>`` appears. One block: tags after it are content. Whitespace right
after ``</think>`` is dropped; text before ``<think>`` is content.
"""
from __future__ import annotations

from r1_megatron.serving.stop_strings import partial_suffix_len

THINK_START, THINK_END = "<think>", "</think>"


def split_reasoning(text: str, starts_inside: bool = False, start: str = THINK_START,
                    end: str = THINK_END) -> tuple[str | None, str]:
    """Whole text -> (reasoning, content); reasoning is None when there is no block (no start tag, and the
    text did not start inside one). An unclosed block is all reasoning."""
    before, opened, rest = ("", start, text) if starts_inside else text.partition(start)
    if not opened:
        return None, text
    reasoning, closed, after = rest.partition(end)
    return reasoning, before + (after.lstrip() if closed else "")


def prompt_opens_think(prompt_text: str, start: str = THINK_START, end: str = THINK_END) -> bool:
    """The prompt ends inside an unclosed block: its last start tag comes after its last end tag."""
    return prompt_text.rfind(start) > prompt_text.rfind(end)


class ReasoningParser:
    """Streamed text -> (reasoning delta, content delta), safe when a tag is split across deltas ("</thi" +
    "nk>"): a suffix that could begin the awaited tag is held back. Concatenated output equals
    `split_reasoning` of the whole text (reasoning None read as "")."""

    _BEFORE, _INSIDE, _AFTER_TAG, _AFTER = range(4)  # awaiting start tag / end tag / non-space / nothing

    def __init__(self, start: str = THINK_START, end: str = THINK_END, starts_inside: bool = False):
        if not start or not end:
            raise ValueError(f"start, end: reasoning tags must be non-empty, got {start!r}, {end!r}")
        self.start, self.end = start, end
        self._state = self._INSIDE if starts_inside else self._BEFORE
        self._held = ""

    def add(self, text: str) -> tuple[str, str]:
        buffer, reasoning, content = self._held + text, "", ""
        self._held = ""
        while buffer:
            if self._state == self._AFTER:
                content, buffer = content + buffer, ""
            elif self._state == self._AFTER_TAG:
                buffer = buffer.lstrip()
                self._state = self._AFTER if buffer else self._AFTER_TAG
            else:
                tag = self.start if self._state == self._BEFORE else self.end
                head, found, buffer = buffer.partition(tag)
                if not found:  # no tag yet: keep what could be its beginning
                    keep = partial_suffix_len(head, [tag])
                    head, self._held = head[:len(head) - keep], head[len(head) - keep:]
                if self._state == self._BEFORE:
                    content += head
                else:
                    reasoning += head
                if found:
                    self._state += 1
        return reasoning, content

    def flush(self) -> tuple[str, str]:
        """The held-back text: a tag that never completed is plain text of the part it was in."""
        held, self._held = self._held, ""
        return (held, "") if self._state == self._INSIDE else ("", held)
