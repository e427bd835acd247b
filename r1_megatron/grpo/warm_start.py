"""Supervised warm start on the task's answers, stopped adaptively on held-out greedy accuracy.

RL learns only from groups whose rewards differ: a random model never solves a problem, so every advantage is 0
and nothing moves (docs/tiny_demo.md). A short SFT pass that stops once greedy accuracy reaches ~0.2
leaves most groups of G samples with both right and wrong answers, the regime where GRPO learns fastest; a fixed
step count either undershoots or makes RL a mere sharpening of an already solved task.
"""
from __future__ import annotations

import logging
import random

import torch

from r1_megatron.data.synthetic import arithmetic_problems, arithmetic_reward
from r1_megatron.rollout import Engine, FinishReason, SamplingParams
from r1_megatron.training.losses import next_token_cross_entropy
from r1_megatron.training.optimizer import OptimizerSettings, build_optimizer, build_scheduler
from r1_megatron.training.step import train_step

from .config import GRPORunConfig
from .task import Task

log = logging.getLogger(__name__)


def greedy_accuracy(engine: Engine, task: Task, problems: list[dict]) -> float:
    """Exact-match accuracy of greedy answers (each must end with its EOS)."""
    prompts = [task.tokenizer.encode(p["question"]) for p in problems]
    out = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=8))
    return sum(arithmetic_reward(task.tokenizer.decode(c.content_ids), p["answer"],
                                 stopped=c.finish_reason is FinishReason.STOP)
               for c, p in zip(out, problems)) / len(problems)


def sft_batch(task: Task, problems: list[dict]) -> dict:
    """question + answer + EOS rows, loss on the answer and EOS only: [B, T] tensors."""
    tok = task.tokenizer
    rows = [(tok.encode(p["question"]), tok.encode(p["answer"]) + [tok.eos_token_id]) for p in problems]
    T = max(len(q) + len(a) for q, a in rows)
    ids = torch.full((len(rows), T), tok.pad_token_id, dtype=torch.int64)
    mask = torch.zeros(len(rows), T - 1)
    for b, (q, a) in enumerate(rows):
        ids[b, :len(q) + len(a)] = torch.tensor(q + a)
        mask[b, len(q) - 1:len(q) + len(a) - 1] = 1.0
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": mask}


def warm_start(cfg: GRPORunConfig, ddp_model, engine: Engine, task: Task, dp_rank: int, dp_size: int,
               say=print) -> dict:
    """Train on fresh problems until greedy accuracy >= target or max_steps; returns a summary dict."""
    ws = cfg.warm_start
    settings = OptimizerSettings(lr=ws.lr, warmup_steps=0, clip_grad=1.0, adam_beta2=0.999,
                                 distributed_optimizer=cfg.optimizer.distributed_optimizer)
    optimizer = build_optimizer(ddp_model, settings)
    scheduler = build_scheduler(optimizer, settings)
    rng = random.Random(f"warm-start:{cfg.seed}")
    accuracy, step = greedy_accuracy(engine, task, task.held_out), 0
    say(f"warm start: held-out greedy accuracy {accuracy:.3f} before SFT (target {ws.target_accuracy})")
    while step < ws.max_steps and accuracy < ws.target_accuracy:
        problems = arithmetic_problems(ws.batch_size, rng.getrandbits(63), cfg.data.arithmetic)
        share = problems[dp_rank::dp_size]
        batch = {k: v.to(engine.device) for k, v in sft_batch(task, share).items()}
        train_step(ddp_model, optimizer, scheduler, [batch], next_token_cross_entropy)
        step += 1
        if step % ws.eval_every == 0:
            accuracy = greedy_accuracy(engine, task, task.held_out)
            say(f"warm start: step {step}, held-out greedy accuracy {accuracy:.3f}")
    return {"warm_start/steps": step, "warm_start/accuracy": accuracy}
