"""One optimizer step over several micro-batches through Megatron's pipeline schedule.

Loss normalisation is global: a loss function returns (sum over its units, unit count) per micro-batch, Megatron
sums the gradients over micro-batches and data-parallel ranks (`calculate_per_token_loss`) and finalize_model_grads
divides by the unit count of the whole global batch. So the same data gives the same gradient whatever the
micro-batch count and the data-parallel size.

A step whose loss or gradient norm is not finite (on any rank) changes nothing: Megatron checks for NaN/Inf only
under fp16's loss scaler, and for the others (fp32, bf16) clipping by a NaN norm writes NaN into every weight.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from r1_megatron.runtime import collective_device, world_max
from r1_megatron.training.micro_batch import MicroBatch
from r1_megatron.training.model_forward import model_forward, schedule_shape

LossFn = Callable[[torch.Tensor, MicroBatch], tuple[torch.Tensor, torch.Tensor]]


def unwrap(model):
    """The R1GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def build_ddp(model, *, distributed_optimizer: bool = False):
    """Megatron DDP (fp32 gradient buffers) around the model; bf16/fp16 models go through Float16Module first."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.transformer.module import Float16Module

    config = model.config
    if config.bf16 or config.fp16:
        model = Float16Module(config, model)
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True,
                                               use_distributed_optimizer=distributed_optimizer)
    return DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)


def connect_schedule(ddp_model, optimizer) -> None:
    """Hooks the pipeline schedule calls: gradient finalisation (DP/SP/embedding all-reduces, expert-bias update,
    division by the global unit count), loss scaling and DDP's no-sync context."""
    from megatron.core.distributed import finalize_model_grads

    config = ddp_model.config
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = ddp_model.no_sync


@dataclass
class StepResult:
    loss: float  # global (all micro-batches, all DP ranks) loss sum / unit count
    units: int  # the global unit count (tokens, sequences, ...) the loss function reported
    grad_norm: float  # global; inf when fp16's loss scaler found an overflow
    lr: float
    updated: bool  # False when the update was skipped: a non-finite loss/gradient, or an fp16 overflow
    nonfinite: bool = False  # skipped because the loss or the gradient norm was NaN/Inf (a divergence)


def _check_micro_batches(micro_batches: list[MicroBatch]) -> tuple[int, int]:
    if not micro_batches:
        raise ValueError("train_step needs at least one micro-batch")
    shapes = {mb.shape for mb in micro_batches}
    if len(shapes) != 1:
        raise ValueError(f"all micro-batches of a step must have one [B, T] shape (pad them), got {sorted(shapes)}")
    return shapes.pop()


def _global_loss(records: list[dict]) -> tuple[float, int]:
    """Σ loss / Σ units over this step's micro-batches and data-parallel ranks, known on every rank."""
    from megatron.core import parallel_state

    group = parallel_state.get_data_parallel_group()
    totals = torch.zeros(2, dtype=torch.float64, device=collective_device(group))
    for record in records:  # filled on the last pipeline stage only
        totals += torch.stack([record["loss_sum"].double(), record["units"].double()]).to(totals.device)
    torch.distributed.all_reduce(totals, group=group)
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        torch.distributed.broadcast(totals, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                                    group=parallel_state.get_pipeline_model_parallel_group())
    return (totals[0] / totals[1].clamp(min=1)).item(), int(totals[1].item())


def _forward_step(loss_fn: LossFn):
    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        output = model_forward(model, batch)  # last stage: logits [B, T, V_local]

        def loss_func(logits_BTV):
            loss_sum, units = loss_fn(logits_BTV, batch)
            units = units.to(torch.int)
            return loss_sum, units, {"loss_sum": loss_sum.detach().clone(), "units": units.detach().clone()}

        return output, loss_func

    return forward_step


def _run_schedule(ddp_model, micro_batches: list[MicroBatch], loss_fn: LossFn, *, forward_only: bool) -> list:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    config = ddp_model.config
    if config.sequence_parallel:
        micro_batches = [mb.pad_to_multiple(config.tensor_model_parallel_size) for mb in micro_batches]
    _check_micro_batches(micro_batches)
    seq_length, batch = schedule_shape(micro_batches[0])  # what pipeline stages pass each other
    return get_forward_backward_func()(
        forward_step_func=_forward_step(loss_fn), data_iterator=iter(micro_batches), model=[ddp_model],
        num_microbatches=len(micro_batches), seq_length=seq_length, micro_batch_size=batch,
        forward_only=forward_only)


@torch.no_grad()
def loss_only(ddp_model, micro_batches: list[MicroBatch], loss_fn: LossFn) -> tuple[float, int]:
    """(global loss sum / global unit count, global unit count) of `micro_batches` in eval mode, no update
    (validation loss); collective over data-parallel (and pipeline) ranks like train_step."""
    was_training = ddp_model.training
    ddp_model.eval()
    try:
        records = _run_schedule(ddp_model, micro_batches, loss_fn, forward_only=True)
    finally:
        ddp_model.train(was_training)
    return _global_loss(records)


def train_step(ddp_model, optimizer, scheduler, micro_batches: list[MicroBatch], loss_fn: LossFn) -> StepResult:
    """Forward/backward over `micro_batches` (this data-parallel rank's share of the global batch, all of one
    [B, T] shape) and one optimizer + LR-scheduler step; skipped when the loss or gradients are not finite."""
    ddp_model.train()
    ddp_model.zero_grad_buffer()
    optimizer.zero_grad()
    records = _run_schedule(ddp_model, micro_batches, loss_fn, forward_only=False)
    loss, units = _global_loss(records)
    updated, nonfinite, grad_norm = guarded_update(optimizer, loss)
    if updated:
        scheduler.step(increment=1)
    return StepResult(loss=loss, units=units, grad_norm=grad_norm, lr=optimizer.param_groups[0]["lr"],
                      updated=updated, nonfinite=nonfinite)


@torch.no_grad()
def guarded_update(optimizer, loss: float) -> tuple[bool, bool, float]:
    """(updated, nonfinite, grad norm): Megatron's `optimizer.step()` taken apart (prepare_grads, the global grad
    norm, clipping by it, step_with_ready_grads) with the update made only when the global `loss` and the norm
    are finite on every rank. A skipped update leaves weights and optimizer state as they were (the caller
    leaves the LR schedule too). An fp16 overflow (the loss scaler backs off) is skipped but not `nonfinite`."""
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    overflow = bool(optimizer.prepare_grads())  # fp16: unscale, check over the grad-stats group, adjust the scale
    grad_norm = math.inf if overflow else float(optimizer.get_grad_norm())  # over TP/PP/EP (and DP if sharded)
    # one answer on every rank, whatever group a NaN showed up in: all must take the same branch (the update's own
    # collectives, replicas that stay identical)
    nonfinite = bool(world_max(int(not math.isfinite(loss) or not (overflow or math.isfinite(grad_norm)))))
    if overflow or nonfinite:
        return False, nonfinite, grad_norm
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):  # as ChainedOptimizer.step clips
        params = [] if getattr(inner, "is_stub_optimizer", False) else inner.get_parameters()
        if params and inner.config.clip_grad > 0:
            clip_grad_by_total_norm_fp32(params, inner.config.clip_grad, grad_norm,
                                         inner.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
    return bool(optimizer.step_with_ready_grads()), False, grad_norm
