"""The SFT step's pieces: bf16 logits reach the loss without an fp32 copy, and every micro-batch of a step has
one shape (empty ones included)."""
import torch

from r1_megatron.sft.step import Batching, micro_batches
from r1_megatron.training.packing import TrainSequence


def test_bf16_logits_reach_the_loss_in_bf16():
    from r1_megatron.models import build_model, preset
    from r1_megatron.parallel import initialize
    from r1_megatron.runtime import seed_everything
    from r1_megatron.training.micro_batch import MicroBatch
    from r1_megatron.training.model_forward import model_forward
    from r1_megatron.training.step import build_ddp

    initialize()
    seed_everything(0)
    ddp = build_ddp(build_model(preset("tiny-dense"), dtype=torch.bfloat16))
    ids = torch.randint(0, 100, (2, 5))
    logits = model_forward(ddp, MicroBatch(ids, ids, torch.ones(2, 5)))
    assert logits.dtype == torch.bfloat16 and logits.shape == (2, 5, 128)  # Float16Module's fp32 copy skipped


def test_micro_batches_have_one_shape_per_step():
    seqs = [TrainSequence(list(range(n)), [1.0] * (n - 1)) for n in (3, 9, 5, 2)]
    padded = micro_batches(seqs, Batching(micro_batch_size=3), pad_id=0)
    assert [mb.shape for mb in padded] == [(3, 8), (3, 8)] and padded[1].loss_mask[1:].sum() == 0
    packed = micro_batches(seqs, Batching(micro_batch_size=1, max_tokens_per_micro_batch=10), pad_id=0)
    assert {mb.shape for mb in packed} == {(1, 10)} and all(mb.packed for mb in packed)
    assert sum(int(mb.loss_mask.sum()) for mb in packed) == sum(len(s.loss_mask) for s in seqs)
