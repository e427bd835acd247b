"""Forward-only passes that give token log-probabilities through the fused kernel: the reference model's, and the
policy's when old-policy logprobs are recomputed. Runs through Megatron's schedule, so it works at any layout."""
from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from r1_megatron.kernels import token_logprobs
from r1_megatron.training.micro_batch import MicroBatch
from r1_megatron.training.model_forward import model_forward, schedule_shape
from r1_megatron.training.step import unwrap


def tensor_parallel_group():
    """The TP group for the vocab-parallel kernels, None at TP1."""
    return parallel_state.get_tensor_model_parallel_group() \
        if parallel_state.get_tensor_model_parallel_world_size() > 1 else None


@torch.no_grad()
def forward_logprobs(model, batches: list[MicroBatch], temperature: float) -> list[torch.Tensor]:
    """log_softmax(logits / T)[labels] for every micro-batch: fp32 [B, T] each, on every rank."""
    core = unwrap(model)
    was_training = core.training
    core.eval()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    padded = [b.pad_to_multiple(tp) if core.config.sequence_parallel else b for b in batches]

    def forward_step(data_iterator, model_chunk):
        batch = next(data_iterator)
        logits_BTV = model_forward(model_chunk, batch)
        return logits_BTV, lambda out, non_loss_data=False: token_logprobs(
            out, batch.labels, temperature=temperature, tp_group=tensor_parallel_group())

    try:
        collected = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(padded), model=[core], num_microbatches=len(padded),
            seq_length=schedule_shape(padded[0])[0], micro_batch_size=schedule_shape(padded[0])[1],
            forward_only=True, collect_non_loss_data=True)
    finally:
        core.train(was_training)
    return [_from_last_stage(collected, i, b) for i, b in enumerate(batches)]


def _from_last_stage(collected, i: int, batch: MicroBatch) -> torch.Tensor:
    T = batch.shape[1]
    out = collected[i][:, :T].float() if parallel_state.is_pipeline_last_stage() else None
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return out
    out = out if out is not None else torch.empty(batch.shape, dtype=torch.float32, device=batch.labels.device)
    torch.distributed.broadcast(out, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                                group=parallel_state.get_pipeline_model_parallel_group())
    return out
