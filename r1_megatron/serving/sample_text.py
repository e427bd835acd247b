"""One choice's text as its tokens arrive: detokenized incrementally, cut at the first stop string, with the
logprobs of the tokens that made it."""
from __future__ import annotations

import dataclasses

from r1_megatron.rollout import FinishReason

from .detokenizer import IncrementalDetokenizer
from .stop_strings import StopStringMatcher


@dataclasses.dataclass
class TextDelta:
    """What one engine delta adds to a choice: text safe to send, the tokens consumed (up to the one that
    completed a stop string; later ones are dropped), their logprobs, where each token's text starts in the
    choice's text (before any stop-string cut), and the finish reason once the choice has ended."""

    text: str
    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]]
    text_offsets: list[int]
    finish_reason: str | None = None
    stopped: bool = False  # a stop string ended it: the engine's sample must be aborted


class SampleText:
    def __init__(self, tokenizer, stops: list[str], prompt_ids: list[int]):
        self.detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids)
        self.matcher = StopStringMatcher(stops) if stops else None
        self.text = ""  # sent so far
        self.num_tokens = 0  # consumed so far (the usage count)
        self.finish_reason: str | None = None
        self._raw_len = 0  # characters detokenized so far, before the stop-string cut

    def add(self, delta) -> TextDelta | None:
        """The next piece of the choice from the engine's SampleDelta; None once the choice has ended (a stop
        string's sample sends on until the engine has aborted it)."""
        if self.finish_reason is not None:
            return None
        out = TextDelta("", [], [], [], [])
        for i, token in enumerate(delta.token_ids):
            out.text_offsets.append(self._raw_len)
            out.token_ids.append(token)
            out.logprobs.append(delta.logprobs[i])
            out.top_logprobs.append(delta.top_logprobs[i] if delta.top_logprobs else [])
            if self._emit(out, self.detokenizer.add([token])):
                break
        else:
            if delta.finish_reason is not None and not self._emit(out, self.detokenizer.flush()):
                out.text += self.matcher.flush() if self.matcher else ""
                # the engine's values are OpenAI's names ("abort": a disconnect or a shutdown ended it)
                out.finish_reason = FinishReason(delta.finish_reason).value
        self.num_tokens += len(out.token_ids)
        self.text += out.text
        self.finish_reason = out.finish_reason
        return out

    def _emit(self, out: TextDelta, piece: str) -> bool:
        """Pass `piece` through the stop-string matcher into `out`; True when a stop string ended the choice."""
        self._raw_len += len(piece)
        if self.matcher is None:
            out.text += piece
            return False
        safe, stopped = self.matcher.add(piece)
        out.text += safe
        if stopped:
            out.finish_reason, out.stopped = "stop", True
        return stopped
