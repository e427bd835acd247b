"""Megatron optimizer (Adam, fp32 master weights for bf16 models, grad clipping) and its LR schedule."""
from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass

import torch


class LRDecay(str, enum.Enum):
    CONSTANT = "constant"
    COSINE = "cosine"
    LINEAR = "linear"


@dataclass
class OptimizerSettings:
    """Adam + linear warmup + decay. R1-Zero: lr 3e-6 (constant after warmup in DeepSeek's reports).
    max_consecutive_skips: an update whose loss or gradient norm is NaN/Inf is skipped (training/step.py); after
    this many steps in a row with a skipped update the run stops (0: never)."""

    lr: float = 3e-6
    min_lr: float = 0.0
    warmup_steps: int = 0
    decay_steps: int = 0  # steps from start to the end of the decay; 0 = the run's total steps
    decay: LRDecay = LRDecay.CONSTANT
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    distributed_optimizer: bool = False  # shard optimizer state over data-parallel ranks (ZeRO-1)
    max_consecutive_skips: int = 3

    def __post_init__(self):
        self.decay = LRDecay(self.decay)
        for f in dataclasses.fields(self):  # inf would switch a safety off (clip_grad) or diverge at once (lr)
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"OptimizerSettings.{f.name} must be finite, got {value}")
        self._check_schedule()
        if self.clip_grad < 0:
            raise ValueError(f"OptimizerSettings.clip_grad must be >= 0 (0 = off), got {self.clip_grad}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"OptimizerSettings.{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.adam_eps > 0 or self.weight_decay < 0:
            raise ValueError(f"OptimizerSettings: adam_eps={self.adam_eps} must be > 0 and weight_decay="
                             f"{self.weight_decay} >= 0")
        if not isinstance(self.max_consecutive_skips, int) or self.max_consecutive_skips < 0:
            raise ValueError(f"OptimizerSettings.max_consecutive_skips must be an integer >= 0 (0: never stop), got "
                             f"{self.max_consecutive_skips!r}")

    def _check_schedule(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"OptimizerSettings.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"OptimizerSettings.min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.warmup_steps < 0 or self.decay_steps < 0:
            raise ValueError(f"OptimizerSettings: warmup_steps={self.warmup_steps} and decay_steps={self.decay_steps} "
                             "must be >= 0")
        if self.decay is not LRDecay.CONSTANT and 0 < self.decay_steps <= self.warmup_steps:
            raise ValueError(f"OptimizerSettings.decay_steps={self.decay_steps} must exceed warmup_steps="
                             f"{self.warmup_steps} for {self.decay.value} decay")

    def for_run(self, total_steps: int) -> "OptimizerSettings":
        """These settings with decay_steps 0 resolved to the run's `total_steps` (decay over the whole run)."""
        if self.decay is LRDecay.CONSTANT or self.decay_steps:
            return self
        if total_steps <= self.warmup_steps:
            raise ValueError(f"optimizer.warmup_steps={self.warmup_steps} leaves nothing of the run's {total_steps} "
                             f"steps to {self.decay.value} decay over")
        return dataclasses.replace(self, decay_steps=total_steps)


def build_optimizer(ddp_model, settings: OptimizerSettings):
    """Megatron's optimizer for the DDP-wrapped model (separate dense and expert parameter groups), connected to
    the pipeline schedule's gradient-finalisation hooks."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    sharded = ddp_model.ddp_config.use_distributed_optimizer
    if settings.distributed_optimizer != sharded:
        # a distributed optimizer reads its parameter shards from DDP's buffers, which DDP lays out for it only
        # when told at construction; the mismatch otherwise surfaces as a None buffer at the first step
        raise ValueError(f"OptimizerSettings.distributed_optimizer={settings.distributed_optimizer} but the DDP "
                         f"model was built with distributed_optimizer={sharded}: pass the same value to build_ddp")
    dtype = ddp_model.config.params_dtype
    config = OptimizerConfig(
        optimizer="adam", lr=settings.lr, min_lr=settings.min_lr, weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_beta1, adam_beta2=settings.adam_beta2, adam_eps=settings.adam_eps,
        clip_grad=settings.clip_grad, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, params_dtype=dtype,
        use_distributed_optimizer=settings.distributed_optimizer)
    optimizer = get_megatron_optimizer(config, [ddp_model])
    from r1_megatron.training.step import connect_schedule

    connect_schedule(ddp_model, optimizer)
    return optimizer


def build_scheduler(optimizer, settings: OptimizerSettings):
    """Megatron's OptimizerParamScheduler: linear warmup from 0, then constant, cosine or linear decay."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    constant = settings.decay is LRDecay.CONSTANT
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=settings.lr, min_lr=settings.lr if constant else settings.min_lr,
        lr_warmup_steps=settings.warmup_steps,
        lr_decay_steps=max(settings.decay_steps, settings.warmup_steps + 1),
        lr_decay_style="constant" if constant else settings.decay.value,
        start_wd=settings.weight_decay, end_wd=settings.weight_decay,
        wd_incr_steps=max(settings.decay_steps, 1), wd_incr_style="constant")
