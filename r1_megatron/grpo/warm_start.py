"""Supervised warm start before RL: an SFT stage on the task's (prompt, reference answer) pairs, stopped
adaptively on held-out greedy accuracy.

RL learns only from groups whose rewards differ: a random model never solves a problem, so every advantage is 0
and nothing moves (docs/tiny_demo.md). A short SFT pass that stops once greedy accuracy reaches ~0.2
leaves most groups of G samples with both right and wrong answers, the regime where GRPO learns fastest; a fixed
step count either undershoots or makes RL a mere sharpening of an already solved task. A task without held-out
examples (a prompt file) trains for max_steps steps.
"""
from __future__ import annotations

import random

from r1_megatron.data.epoch_order import EpochOrder
from r1_megatron.data.prompt_dataset import PromptSample
from r1_megatron.rollout import Engine, FinishReason, SamplingParams
from r1_megatron.sft.step import Batching, sft_step
from r1_megatron.task import Task
from r1_megatron.training.optimizer import OptimizerSettings
from r1_megatron.training.run import Run

from .config import GRPORunConfig

GREEDY_MAX_NEW_TOKENS = 8


def greedy_accuracy(engine: Engine, task: Task, samples: list[PromptSample]) -> float:
    """Mean task score of greedy completions (a completion cut at the length limit did not stop by itself)."""
    out = engine.generate([list(s.prompt_ids) for s in samples],
                          SamplingParams(temperature=0, max_new_tokens=GREEDY_MAX_NEW_TOKENS))
    return sum(task.score(task.tokenizer.decode(c.content_ids), samples[c.prompt_index],
                          stopped=c.finish_reason is FinishReason.STOP) for c in out) / len(samples)


class WarmStartExamples:
    """The warm start's training examples: fresh problems from a synthetic task's generator, else the task's own
    examples (already rendered, with their final reference answers) in a seeded order of their own, so the RL
    prompt order is untouched."""

    def __init__(self, task: Task, seed: int):
        self.task = task
        self.rng = random.Random(f"warm-start:{seed}")
        self.order = None if task.generator else EpochOrder(len(task.dataset.samples), f"warm-start:{seed}")

    def next_batch(self, n: int) -> list[PromptSample]:
        if self.order is None:
            return self.task.samples(self.task.generator(n, self.rng.getrandbits(63)), source="warm start")
        return [self.task.dataset.samples[i] for i in self.order.take(n)]


def warm_start(cfg: GRPORunConfig, run: Run, engine: Engine, task: Task) -> dict:
    """Train until held-out greedy accuracy >= target or max_steps; returns a summary dict."""
    ws = cfg.warm_start
    settings = OptimizerSettings(lr=ws.lr, warmup_steps=0, clip_grad=1.0, adam_beta2=0.999,
                                 distributed_optimizer=cfg.optimizer.distributed_optimizer)
    optimizer, scheduler = run.build_optimizer(settings)
    examples = WarmStartExamples(task, cfg.seed)
    accuracy = greedy_accuracy(engine, task, task.held_out) if task.held_out else None
    run.say(f"warm start: held-out greedy accuracy {accuracy:.3f} before SFT (target {ws.target_accuracy})"
            if accuracy is not None else f"warm start: {ws.max_steps} SFT steps (no held-out examples to stop on)")
    step = 0
    while step < ws.max_steps and (accuracy is None or accuracy < ws.target_accuracy):
        share = examples.next_batch(ws.batch_size)[run.dp_rank::run.dp_size]
        seqs = [task.sft_sequence(s) for s in share]
        sft_step(run.policy, optimizer, scheduler, seqs, Batching(micro_batch_size=len(seqs)),
                 task.tokenizer.pad_token_id, engine.device)
        step += 1
        if accuracy is not None and step % ws.eval_every == 0:
            accuracy = greedy_accuracy(engine, task, task.held_out)
            run.say(f"warm start: step {step}, held-out greedy accuracy {accuracy:.3f}")
    summary = {"warm_start/steps": step}
    return summary | ({"warm_start/accuracy": accuracy} if accuracy is not None else {})
