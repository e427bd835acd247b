"""The training forward of one MicroBatch through a Megatron GPTModel (any pipeline stage).

Unpacked rows: plain causal attention, positions 0..T-1. Packed rows (segment_ids set): positions restart at
each sequence and attention stays within it.
"""
from __future__ import annotations

from r1_megatron.training.micro_batch import MicroBatch


def model_forward(model, mb: MicroBatch):
    """model(...) for `mb`: logits [B, T, V_local] on the last pipeline stage, hidden states elsewhere."""
    if mb.packed:
        raise NotImplementedError("packed micro-batches: not wired yet")
    return model(mb.input_ids, mb.positions(), None)
