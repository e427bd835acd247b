"""A Task: the one notion of "what is being learned" that SFT, RL and evaluation share.

A task has examples (prompts rendered with its template, each with its reference data), a way to turn an example
into a supervised sequence (prompt + reference answer + EOS, trained on the answer and the EOS), held-out
examples for evaluation, and a scorer (a reward-registry function: 1.0 for a correct completion). The built-in
synthetic addition task is one Task; a prompt file with reference answers is another.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from r1_megatron.data.prompt_dataset import PromptDataset, PromptSample
from r1_megatron.tokenizer import Tokenizer
from r1_megatron.training.packing import TrainSequence


@dataclasses.dataclass
class Task:
    name: str
    tokenizer: Tokenizer
    tokenizer_dir: str
    dataset: PromptDataset  # the examples, in a seeded, resumable order
    scorer: str  # reward-registry name of the correctness reward, e.g. "arithmetic_exact", "math_accuracy"
    held_out: list[PromptSample] = dataclasses.field(default_factory=list)  # never trained on ([]: none)
    generator: Callable[[int, int], list[dict[str, Any]]] | None = None  # fresh records (n, seed): synthetic only

    def samples(self, records: Sequence[dict[str, Any]], source: str) -> list[PromptSample]:
        """Records (question, answer, ...) as examples, rendered and validated like the task's own."""
        return PromptDataset.from_records(records, self.dataset.config, self.tokenizer, source=source).samples

    def sft_sequence(self, sample: PromptSample) -> TrainSequence:
        """prompt + reference answer + EOS; the loss covers the answer and the EOS (labels are the next token, so
        the mask starts at the prompt's last position)."""
        if sample.answer is None:
            raise ValueError(f"{sample.source}: task {self.name!r} has no reference answer to train on")
        prompt = list(sample.prompt_ids)
        answer = self.tokenizer.encode(sample.answer) + [self.tokenizer.eos_token_id]
        return TrainSequence(prompt + answer, [0.0] * (len(prompt) - 1) + [1.0] * len(answer))

    def score(self, completion: str, sample: PromptSample, *, stopped: bool) -> float:
        """The scorer's value of a completion (its text without the EOS that ended it); `stopped`: it ended by
        itself (EOS), not at the length limit."""
        from r1_megatron.rewards.registry import get_reward

        return float(get_reward(self.scorer)(completion, {**sample.reward_sample(),
                                                          "finish_reason": "stop" if stopped else "length"}))
