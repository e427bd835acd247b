"""Full-vocabulary logits from a Megatron GPTModel (the evaluation / parity entry point)."""
from __future__ import annotations

import torch


def position_ids_like(input_ids_BT: torch.Tensor) -> torch.Tensor:
    """Positions 0..T-1 for every row of a right-padded or unpadded [B, T] batch."""
    B, T = input_ids_BT.shape
    return torch.arange(T, device=input_ids_BT.device).unsqueeze(0).expand(B, T)


@torch.no_grad()
def logits(model, input_ids_BT: torch.Tensor) -> torch.Tensor:
    """Causal logits [B, T, V] (full vocabulary, gathered across tensor-parallel ranks) for token ids [B, T].

    Pipeline-parallel models return their logits from the last stage; this entry point expects a single stage.
    """
    from megatron.core import parallel_state

    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        raise ValueError("logits() runs a single pipeline stage; pipeline-parallel inference comes with "
                         "r1_megatron.parallel (parallel-layouts issue)")
    if input_ids_BT.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids_BT.shape)}")
    was_training = model.training
    model.eval()
    try:
        logits_BTV = model(input_ids_BT, position_ids_like(input_ids_BT), attention_mask=None,
                           runtime_gather_output=True)
    finally:
        model.train(was_training)
    return logits_BTV
