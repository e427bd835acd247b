"""The training forward of one MicroBatch through a Megatron GPTModel (any pipeline stage).

Unpacked rows: plain causal attention, positions 0..T-1 (exactly `model(ids, positions, None)`). Packed rows
(segment_ids set): positions restart at each sequence and attention stays within it (models/packed.py):
    - SDPAttention (CPU, or GPU without TransformerEngine): a block-diagonal causal attention mask and per-token
      rotary positions; the output has the micro-batch's [B, T] layout as usual;
    - TransformerEngine: Megatron's THD path, the rows flattened to one sequence of B·T tokens with cu_seqlens at
      every segment. Logits come back as [B, T, V_local]; hidden states between pipeline stages are
      [B·T (/TP with sequence parallelism), 1, H], so the pipeline schedule must be told `schedule_shape(...)`.
MoE routing is per token, so packing changes no token's output; but the expert-bias load counts and the aux
losses see every token, padding included, and a packed row as one "sequence" (seq_aux_loss). GPTModel's
padding_mask would exclude padding, but megatron-core 0.16.1 breaks with it when the expert bias is on
(TopKRouter._apply_expert_bias: routing_map [N, E] & ~padding_mask [N]), so it is not passed.
A micro-batch with recorded routing (extras["routing"], [B, T, L, k]) is routed as the model's RoutingControl
says (models/routing_replay.py: replayed, or only compared).
"""
from __future__ import annotations

import torch

from r1_megatron.models.attention import takes_packed_seq_params
from r1_megatron.models.packed import block_causal_mask, packed_rotary, positions_from_segments, thd_params
from r1_megatron.models.routing_replay import replay_for
from r1_megatron.training.micro_batch import MicroBatch


def _half_precision_kwargs(model) -> dict:
    """Megatron's Float16Module (bf16/fp16 models) upcasts the last stage's output to fp32 by default: a full
    fp32 [B, T, V] copy of the logits. The losses read the logits in their own dtype (the fused kernels keep
    per-token fp32 state only), so the copy is skipped."""
    from megatron.core.transformer.module import Float16Module

    while hasattr(model, "module"):
        if isinstance(model, Float16Module):
            return {"fp32_output": False}
        model = model.module
    return {}


def uses_thd(mb: MicroBatch) -> bool:
    """True when `mb` runs as one flattened THD sequence (packed, with TransformerEngine attention)."""
    return mb.packed and takes_packed_seq_params()


def schedule_shape(mb: MicroBatch) -> tuple[int, int]:
    """(seq_length, micro_batch_size) to give Megatron's pipeline schedule for `mb`: the shape of the hidden
    states passed between pipeline stages ((T, B), or (B·T, 1) for a THD forward)."""
    B, T = mb.shape
    return (B * T, 1) if uses_thd(mb) else (T, B)


def model_forward(model, mb: MicroBatch):
    """model(...) for `mb`: logits [B, T, V_local] on the last pipeline stage, hidden states elsewhere."""
    from r1_megatron.training.step import unwrap  # step imports this module

    core = unwrap(model)
    with replay_for(core, mb.extras.get("routing"), flattened=uses_thd(mb)):
        return _forward(model, core, mb)


def _forward(model, core, mb: MicroBatch):
    kwargs = _half_precision_kwargs(model)
    if not mb.packed:
        return model(mb.input_ids, mb.positions(), None, **kwargs)
    positions_BT = mb.position_ids if mb.position_ids is not None else positions_from_segments(mb.segment_ids)
    _check_packed(core.config, mb, positions_BT, thd=uses_thd(mb))
    if uses_thd(mb):
        return _thd_forward(model, core, mb, positions_BT, kwargs)
    with packed_rotary(positions_BT):
        return model(mb.input_ids, positions_BT, block_causal_mask(mb.segment_ids), **kwargs)


def _thd_forward(model, core, mb: MicroBatch, positions_BT, kwargs: dict):
    """Written from megatron-core 0.16.1's THD path (GPTModel, attention, rope utils); tested on CPU with a test
    double of TE's varlen attention, not with TE itself. Megatron's THD rotary takes each token's position from
    cu_seqlens (0 at every segment start), so `positions_BT` must restart at each segment, as packing makes it."""
    B, T = mb.shape
    out = model(mb.input_ids.reshape(1, B * T), positions_BT.reshape(1, B * T), None,
                packed_seq_params=thd_params(mb.segment_ids), **kwargs)
    return out.view(B, T, -1) if core.post_process else out  # logits [1, B·T, V] -> [B, T, V]


def _check_packed(config, mb: MicroBatch, positions_BT: torch.Tensor, thd: bool) -> None:
    B, T = mb.shape
    tp = config.tensor_model_parallel_size
    tokens = B * T if thd else T
    if config.sequence_parallel and tokens % tp:
        raise ValueError(f"packed micro-batch of shape {(B, T)}: sequence parallelism splits {tokens} tokens over "
                         f"{tp} ranks; pad it with MicroBatch.pad_to_multiple({tp})")
    if config.context_parallel_size != 1:
        raise NotImplementedError("packed micro-batches with context parallelism (needs cu_seqlens_*_padded)")
    if config.recompute_granularity is not None and not thd:
        # MLA computes its rotary table inside the layer; a recomputed layer would run outside packed_rotary
        raise NotImplementedError("packed micro-batches on SDPAttention with activation recomputation")
    if not thd and int(positions_BT.max()) >= T:
        raise ValueError(f"packed micro-batch: position_ids reach {int(positions_BT.max())}, past the row length "
                         f"{T} (positions restart at 0 in every sequence)")
