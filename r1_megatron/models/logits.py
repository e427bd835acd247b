"""Full-vocabulary logits from a Megatron GPTModel on any layout (the evaluation / parity entry point)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def position_ids_like(input_ids_BT: torch.Tensor) -> torch.Tensor:
    """Positions 0..T-1 for every row of a right-padded or unpadded [B, T] batch."""
    B, T = input_ids_BT.shape
    return torch.arange(T, device=input_ids_BT.device).unsqueeze(0).expand(B, T)


def _last_stage_forward(model, ids_BT: torch.Tensor):
    """Run all pipeline stages through Megatron's schedule; the last stage returns [B, T, V], others None."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return model(ids_BT, position_ids_like(ids_BT), None, runtime_gather_output=True)

    def forward_step(data_iterator, model_chunk):
        batch_BT = next(data_iterator)
        output = model_chunk(batch_BT, position_ids_like(batch_BT), None, runtime_gather_output=True)
        return output, lambda out, non_loss_data=False: out

    collected = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter([ids_BT]), model=[model], num_microbatches=1,
        seq_length=ids_BT.shape[1], micro_batch_size=ids_BT.shape[0], forward_only=True,
        collect_non_loss_data=True)
    return collected[0] if parallel_state.is_pipeline_last_stage() else None


def _broadcast_from_last_stage(logits_BTV, shape, dtype, device):
    from megatron.core import parallel_state

    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return logits_BTV
    if logits_BTV is None:
        logits_BTV = torch.empty(shape, dtype=dtype, device=device)
    torch.distributed.broadcast(logits_BTV.contiguous(), src=parallel_state.get_pipeline_model_parallel_last_rank(),
                                group=parallel_state.get_pipeline_model_parallel_group())
    return logits_BTV


@torch.no_grad()
def logits(model, input_ids_BT: torch.Tensor) -> torch.Tensor:
    """Causal logits [B, T, V] for token ids [B, T] (no padding), identical on every rank.

    Gathered over tensor parallelism and sent from the last pipeline stage. With sequence parallelism the batch is
    right-padded to a multiple of the TP size; causality makes the padding invisible to the real positions.
    Every rank of the model-parallel group must call this together (MoE and pipeline stages communicate).
    """
    from megatron.core import parallel_state

    if input_ids_BT.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids_BT.shape)}")
    B, T = input_ids_BT.shape
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pad = (-T) % tp if model.config.sequence_parallel else 0
    ids_BT = F.pad(input_ids_BT, (0, pad))
    was_training = model.training
    model.eval()
    try:
        out_BTV = _last_stage_forward(model, ids_BT)
    finally:
        model.train(was_training)
    shape = (B, T + pad, model.model_config.vocab_size)
    out_BTV = _broadcast_from_last_stage(out_BTV, shape, model.config.params_dtype, input_ids_BT.device)
    return out_BTV[:, :T]
