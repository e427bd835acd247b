"""A completion being generated (Sequence) and the finished result handed to callers (Completion)."""
from __future__ import annotations

import dataclasses
import enum

import torch

from .routing_trace import RoutingTrace
from .sampling_params import SamplingParams


class FinishReason(str, enum.Enum):
    STOP = "stop"  # an EOS or stop token was sampled (it is the last token of the completion)
    LENGTH = "length"  # max_new_tokens reached, or the sequence filled max_seq_len
    ABORT = "abort"  # Engine.abort (a server's client went away, a stop string matched, shutdown)


@dataclasses.dataclass(frozen=True)
class Completion:
    """One sampled completion of prompt `prompt_index`.

    logprobs[i] = log_softmax(logits / T)[token_ids[i]] under the model that generated it: the temperature-scaled
    full distribution before top-k/top-p truncation (T taken as 1 for greedy), which is what the trainer's forward
    computes for the same token (rollout/sampler.py)."""

    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    # with Engine(record_routing=True): the experts each fed token (prompt + completion[:-1]) was routed to,
    # [P + C - 1, L, k] over this rank's MoE layers (models/routing_replay.py); None otherwise. Not compared or
    # shown: a tensor has no single truth value, and it can be large
    routing: torch.Tensor | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def content_ids(self) -> list[int]:
        """The tokens without the EOS/stop token that ended the completion (a chat model's `<|im_end|>` is no part
        of its answer; whether it stopped is `finish_reason`)."""
        return self.token_ids[:-1] if self.finish_reason is FinishReason.STOP else self.token_ids


@dataclasses.dataclass(eq=False)
class Sequence:
    """Completion `sample_index` of prompt `prompt_index` while it is generated.

    Its tokens are prompt_ids + token_ids; the first `num_computed` of them have keys/values in the cache, in
    the blocks `block_ids` (rollout/block_manager.py). A step computes the next chunk of uncomputed tokens
    (a prefill chunk, or the one last sampled token when decoding); when that reaches the end, the step samples
    the next token. `row` is its row of the engine's block-table tensor while it holds blocks. A group's
    leader carries the siblings it forks once the prompt is computed (they share the prompt's blocks)."""

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    stop_ids: frozenset[int]
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = dataclasses.field(default_factory=list)  # per token, when
    #                                                            params.logprobs > 0 (rollout/top_logprobs.py)
    block_ids: list[int] = dataclasses.field(default_factory=list)
    num_computed: int = 0
    row: int | None = None
    siblings: list[Sequence] = dataclasses.field(default_factory=list)
    finish_reason: FinishReason | None = None
    routing: RoutingTrace | None = None  # the experts of its computed tokens (Engine(record_routing=True))

    def tokens(self, start: int, end: int) -> list[int]:
        """Tokens [start, end) of prompt + completion."""
        P = len(self.prompt_ids)
        if end <= P:
            return self.prompt_ids[start:end]
        return self.prompt_ids[start:] + self.token_ids[max(0, start - P):end - P]

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.token_ids)

    def append(self, token: int, logprob: float, max_seq_len: int, top: list[tuple[int, float]] = ()) -> None:
        """Add a sampled token (and its top alternatives, when asked for); finish on a stop token, at
        max_new_tokens, or when no position is left for the next token's key (length == max_seq_len)."""
        self.token_ids.append(token)
        self.logprobs.append(logprob)
        self.top_logprobs.append(list(top))
        if token in self.stop_ids:
            self.finish_reason = FinishReason.STOP
        elif len(self.token_ids) >= self.params.max_new_tokens or self.length >= max_seq_len:
            self.finish_reason = FinishReason.LENGTH

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def completion(self) -> Completion:
        return Completion(self.prompt_index, list(self.token_ids), list(self.logprobs), self.finish_reason,
                          None if self.routing is None else self.routing.tensor())
