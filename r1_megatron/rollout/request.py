"""A request added with Engine.add_request, and what Engine.step reports about it.

A request is one prompt and its SamplingParams; its n samples are Sequences in the scheduler. The request keeps,
per sample, how many tokens it has already reported, so every RequestOutput carries only what is new: the tokens
sampled since the last report, and the finish reason once, in the report where the sample finished. The engine
forgets a request as soon as the report that finishes its last sample is handed out.
"""
from __future__ import annotations

import dataclasses

from .sampling_params import SamplingParams
from .sequence import FinishReason, Sequence


@dataclasses.dataclass(frozen=True)
class SampleDelta:
    """What is new about sample `index` of a request: its tokens since the last report, their logprobs
    (log_softmax(logits / T)[token], T taken as 1 when greedy), per token the params.logprobs most likely
    (id, logprob) pairs of the same distribution, most likely first ([] when params.logprobs == 0), and the
    finish reason in the report where the sample finished (else None)."""

    index: int
    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]]
    finish_reason: FinishReason | None


@dataclasses.dataclass(frozen=True)
class RequestOutput:
    """One report about a request: the samples with news, in index order; finished once every sample has
    finished (the engine has then forgotten the request)."""

    request_id: str
    prompt_token_ids: list[int]
    samples: list[SampleDelta]
    finished: bool


@dataclasses.dataclass(eq=False)
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    sequences: list[Sequence]
    reported: list[int] = dataclasses.field(init=False)  # tokens reported, per sample
    finish_reported: list[bool] = dataclasses.field(init=False)

    def __post_init__(self):
        self.reported = [0] * len(self.sequences)
        self.finish_reported = [False] * len(self.sequences)

    @property
    def finished(self) -> bool:
        return all(self.finish_reported)

    def report(self) -> RequestOutput | None:
        """The news since the last report (None when there is none); marks it reported."""
        samples = []
        for j, seq in enumerate(self.sequences):
            start, done = self.reported[j], seq.finished and not self.finish_reported[j]
            if start == len(seq.token_ids) and not done:
                continue
            samples.append(SampleDelta(j, seq.token_ids[start:], seq.logprobs[start:], seq.top_logprobs[start:],
                                       seq.finish_reason if done else None))
            self.reported[j], self.finish_reported[j] = len(seq.token_ids), seq.finished
        if not samples:
            return None
        return RequestOutput(self.request_id, self.prompt_ids, samples, self.finished)
