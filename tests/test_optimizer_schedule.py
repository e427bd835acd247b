"""The LR schedule follows linear warmup then cosine decay; bad optimizer settings name the field."""
import math

import pytest

from r1_megatron.models import build_model, preset
from r1_megatron.runtime import ensure_parallel_state, seed_everything
from r1_megatron.training.optimizer import OptimizerSettings, build_optimizer, build_scheduler
from r1_megatron.training.step import build_ddp


def lrs(settings, steps):
    ensure_parallel_state()
    seed_everything(0)
    optimizer = build_optimizer(build_ddp(build_model(preset("tiny-moe"))), settings)
    scheduler = build_scheduler(optimizer, settings)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        scheduler.step(increment=1)
    return out


def test_warmup_then_cosine():
    got = lrs(OptimizerSettings(lr=1e-3, min_lr=1e-4, warmup_steps=2, decay_steps=6, decay="cosine"), 8)
    # step s: warmup 1e-3·s/2; then 1e-4 + 0.9e-3·(1 + cos(π·(s-2)/4))/2; constant at min_lr after step 6
    want = [0.0, 5e-4, 1e-3, 1e-4 + 0.9e-3 * (1 + math.cos(math.pi / 4)) / 2, 5.5e-4,
            1e-4 + 0.9e-3 * (1 + math.cos(3 * math.pi / 4)) / 2, 1e-4, 1e-4]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_constant_after_warmup():
    assert lrs(OptimizerSettings(lr=3e-6, warmup_steps=0), 3) == pytest.approx([3e-6] * 3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=0), "OptimizerSettings.lr must be > 0, got 0"),
    (dict(lr=1e-3, min_lr=1e-2), r"min_lr must be in \[0, lr=0.001\], got 0.01"),
    (dict(decay="cosine", warmup_steps=5, decay_steps=5), "decay_steps=5 must exceed warmup_steps=5"),
    (dict(decay="exponential"), "'exponential' is not a valid LRDecay"),
    (dict(adam_beta2=1.0), r"adam_beta2 must be in \[0, 1\), got 1.0"),
    (dict(adam_beta1=-0.1), r"adam_beta1 must be in \[0, 1\), got -0.1"),
    (dict(adam_eps=0.0), "adam_eps=0.0 must be > 0"),
    (dict(weight_decay=-1e-2), "weight_decay=-0.01 >= 0"),
    (dict(max_consecutive_skips=-1), r"max_consecutive_skips must be an integer >= 0 \(0: never stop\), got -1"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptimizerSettings(**kwargs)
