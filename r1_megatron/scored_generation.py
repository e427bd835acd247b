"""Generate → decode → score: the one path from prompts to scored samples, shared by GRPO rollouts, evaluation
(`r1-megatron eval` and evaluation inside training) and rejection sampling.

    batch = generate_and_score(engine, tokenizer, prompt_ids, references, params, rewards, extract=scorer.extract)
    batch.samples[i]   # prompt and sample index, text, token ids, finish reason, each reward, the answer
    batch.failures()   # {"timeouts": ..., "crashes": ..., "errors": ...} of the reward runner

The rewards score each completion's text decoded with special tokens kept but without the EOS/stop token that
ended it (a chat model's `<|im_end|>` would fail the format reward's "nothing after </answer>"), with its prompt's
reference data plus `finish_reason` ("stop" or "length": whether it ended by itself).
"""
from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

from r1_megatron.rewards.runner import RewardBatch
from r1_megatron.rollout import Completion, Engine, FinishReason, SamplingParams

# (completion text, stopped by itself) -> the answer it commits to, None when it commits to none
AnswerExtractor = Callable[[str, bool], "str | None"]


class Scorer(Protocol):
    """What scores completions: a RewardRunner (rule rewards), or model_rewards.build_reward_scorer's scorer."""

    def score(self, completions: Sequence[str], samples: Sequence[Mapping[str, Any]]) -> RewardBatch: ...


@dataclasses.dataclass(frozen=True)
class ScoredSample:
    prompt_index: int  # position of its prompt in the call's prompts
    sample_index: int  # j of the prompt's n samples
    text: str  # decoded without the EOS/stop token that ended it
    token_ids: list[int]  # what the model generated, the EOS/stop token included
    logprobs: list[float]
    finish_reason: FinishReason
    rewards: dict[str, float]  # each reward of the runner, unweighted
    reward: float  # their weighted sum
    answer: str | None  # what `extract` found (None without an extractor)
    failure: str | None  # None, "timeout", "crash" or "error" (rewards/runner.py RewardBatch)
    error: str | None  # what happened to a failed sample, one line first

    @property
    def stopped(self) -> bool:
        return self.finish_reason is FinishReason.STOP


@dataclasses.dataclass
class ScoredBatch:
    samples: list[ScoredSample]  # prompt by prompt, the n samples of a prompt in order
    completions: list[Completion]
    scored: RewardBatch
    generate_s: float
    reward_s: float

    def failures(self) -> dict[str, int]:
        """Samples whose scoring timed out, whose reward worker crashed, or whose reward raised."""
        counts = collections.Counter(self.scored.failure)
        return {"timeouts": counts["timeout"], "crashes": counts["crash"], "errors": counts["error"]}


def reward_inputs(tokenizer, completions: Sequence[Completion], references: Sequence[Mapping[str, Any]]
                  ) -> tuple[list[str], list[dict]]:
    """What the rewards score: each completion's text without its ending EOS/stop token, and its prompt's
    reference data with the completion's finish_reason."""
    texts = [tokenizer.decode(c.content_ids) for c in completions]
    samples = [{**references[c.prompt_index], "finish_reason": c.finish_reason.value} for c in completions]
    return texts, samples


def generate_and_score(engine: Engine, tokenizer, prompt_ids: Sequence[Sequence[int]],
                       references: Sequence[Mapping[str, Any]], params: SamplingParams | Sequence[SamplingParams],
                       rewards: Scorer, *, extract: AnswerExtractor | None = None, offload=None) -> ScoredBatch:
    """Generate every prompt's completions with `engine` (inside `engine.generating(offload=...)`), decode and
    score them with `rewards`; references[i] is prompt i's reference data (the reward registry's sample: answer,
    tests). An empty prompt list still enters generation (expert-parallel peers step in lockstep)."""
    t0 = time.perf_counter()
    with engine.generating(offload=offload):
        completions = engine.generate([list(p) for p in prompt_ids], params)
    t1 = time.perf_counter()
    texts, samples = reward_inputs(tokenizer, completions, references)
    scored = rewards.score(texts, samples)
    t2 = time.perf_counter()
    return ScoredBatch(_samples(completions, texts, scored, extract), completions, scored, t1 - t0, t2 - t1)


def _samples(completions, texts, scored: RewardBatch, extract: AnswerExtractor | None) -> list[ScoredSample]:
    seen: collections.Counter[int] = collections.Counter()
    out = []
    for i, (c, text) in enumerate(zip(completions, texts)):
        stopped = c.finish_reason is FinishReason.STOP
        out.append(ScoredSample(c.prompt_index, seen[c.prompt_index], text, c.token_ids, c.logprobs,
                                c.finish_reason, {name: values[i] for name, values in scored.per_reward.items()},
                                scored.total[i], extract(text, stopped) if extract else None, scored.failure[i],
                                scored.errors[i] if scored.errors else None))
        seen[c.prompt_index] += 1
    return out
