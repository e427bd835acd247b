"""A tiny policy with Megatron's optimizer in this process, and batches and loss functions that make a step's loss
or gradients non-finite: shared by tests/training/test_guarded_update.py and tests/adversarial/test_training_guards.py."""
from __future__ import annotations

import torch

from r1_megatron.models import build_model, preset
from r1_megatron.runtime import ensure_parallel_state, seed_everything
from r1_megatron.training.losses import next_token_cross_entropy
from r1_megatron.training.micro_batch import MicroBatch
from r1_megatron.training.optimizer import OptimizerSettings, build_optimizer, build_scheduler
from r1_megatron.training.step import build_ddp, unwrap


def trainer(**settings):
    """(ddp, optimizer, scheduler) of the tiny-moe preset, the same initial weights every call; warmup 2 so that
    a scheduler step shows in the LR."""
    ensure_parallel_state()
    seed_everything(0)
    options = OptimizerSettings(**{"lr": 1e-2, "warmup_steps": 2, **settings})
    ddp = build_ddp(build_model(preset("tiny-moe")), distributed_optimizer=options.distributed_optimizer)
    optimizer = build_optimizer(ddp, options)
    return ddp, optimizer, build_scheduler(optimizer, options)


def batch(ddp, seed: int) -> list[MicroBatch]:
    """Two micro-batches of 2 random sequences of 8 tokens."""
    vocab = unwrap(ddp).model_config.vocab_size
    ids = torch.randint(0, vocab, (4, 9), generator=torch.Generator().manual_seed(seed))
    return [MicroBatch(part[:, :-1], part[:, 1:], torch.ones(2, 8)) for part in ids.split(2)]


def nan_loss(logits_BTV, batch):
    """A loss that is NaN (and so are its gradients)."""
    loss_sum, units = next_token_cross_entropy(logits_BTV, batch)
    return loss_sum * float("nan"), units


class _InfGradient(torch.autograd.Function):
    """Identity forward; an infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def inf_gradient(logits_BTV, batch):
    """The cross-entropy, finite, with infinite gradients."""
    return next_token_cross_entropy(_InfGradient.apply(logits_BTV), batch)


def weights(ddp) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in unwrap(ddp).named_parameters()}


def adam_state(optimizer) -> list[torch.Tensor]:
    """Every per-parameter optimizer state tensor (step, exp_avg, exp_avg_sq), in a fixed order."""
    out = []
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        for group in inner.optimizer.param_groups:
            for p in group["params"]:
                out += [v.detach().clone() for _, v in sorted(inner.optimizer.state[p].items())]
    return out


def same(a, b) -> bool:
    """Bitwise equal dicts or lists of tensors."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
