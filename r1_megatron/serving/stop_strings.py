"""Stop strings over streamed text: emit what cannot be part of a stop string, hold back what still could."""
from __future__ import annotations

from typing import Sequence


def partial_suffix_len(text: str, patterns: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some pattern (0 if none): the part
    that the next text could complete into a pattern, so it must not be emitted yet."""
    longest = max((len(p) for p in patterns), default=1) - 1
    for k in range(min(longest, len(text)), 0, -1):
        tail = text[-k:]
        if any(p.startswith(tail) for p in patterns):
            return k
    return 0


def first_completed(text: str, stops: Sequence[str]) -> tuple[int, int] | None:
    """(start, end) of the stop string that completes first when ``text`` is read left to right: the smallest
    end, then the smallest start (the longest of those ending there); None when no stop string occurs. This is
    where generation stops whatever the text's chunking: the earliest point at which some stop string is whole."""
    found = [(i + len(s), i) for s in stops if (i := text.find(s)) >= 0]
    if not found:
        return None
    end, start = min(found)
    return start, end


class StopStringMatcher:
    """Streamed text cut at the first stop string, the stop string excluded (OpenAI's ``stop``).

    ``add(text)`` returns ``(safe, stopped)``: ``safe`` is text that no stop string can overlap; a suffix that
    could start one is held back. When a stop string completes, ``safe`` is everything up to its start and
    ``stopped`` is True; later calls return ``("", True)``. ``flush()`` returns the held-back suffix (no stop
    string completed). Concatenated output == ``text[:start]`` of `first_completed` on the whole text, or the
    whole text.
    """

    def __init__(self, stops: Sequence[str]):
        for i, stop in enumerate(stops):
            if not isinstance(stop, str) or not stop:
                raise ValueError(f"stop[{i}]: a stop string must be a non-empty string, got {stop!r}")
        self.stops = list(stops)
        self.stopped = False
        self._held = ""

    def add(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        buffer = self._held + text
        match = first_completed(buffer, self.stops)
        if match is not None:
            self.stopped, self._held = True, ""
            return buffer[:match[0]], True
        keep = partial_suffix_len(buffer, self.stops)
        self._held = buffer[len(buffer) - keep:]
        return buffer[:len(buffer) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held
