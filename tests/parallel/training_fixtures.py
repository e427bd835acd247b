"""Shared set-up for the training and checkpoint scenarios: the same data and optimizer on every layout."""
from __future__ import annotations

import torch

from r1_megatron.models import load_hf
from r1_megatron.models.hf_checkpoint import _local_tensors
from r1_megatron.models.hf_weights import weight_rules
from r1_megatron.models.placement import Placement
from r1_megatron.training import step as step_module
from r1_megatron.training.losses import next_token_cross_entropy
from r1_megatron.training.micro_batch import MicroBatch
from r1_megatron.training.optimizer import OptimizerSettings, build_optimizer, build_scheduler
from r1_megatron.training.step import build_ddp, train_step, unwrap

GLOBAL_BATCH, SEQ = 8, 12


def global_batch(step: int, vocab: int) -> torch.Tensor:
    """The step's 8 sequences of 13 tokens (input 12 + next-token labels), identical on every rank."""
    return torch.randint(0, vocab, (GLOBAL_BATCH, SEQ + 1), generator=torch.Generator().manual_seed(100 + step))


def micro_batches(ids: torch.Tensor, dp_rank: int, dp_size: int, micro_batch_size: int) -> list[MicroBatch]:
    """This DP rank's contiguous share of the global batch, cut into micro-batches."""
    share = ids.chunk(dp_size)[dp_rank]
    return [MicroBatch(mb[:, :-1], mb[:, 1:], torch.ones(mb.shape[0], SEQ)) for mb in share.split(micro_batch_size)]


def setup(ckpt, *, dtype=torch.float32, distributed_optimizer=False):
    # No warmup: Megatron's scheduler gives lr 0 to the first step of a warmup, which would hide everything.
    # adam_eps 1e-6: Adam's first update is lr·g/(|g|+eps), which turns fp32 reduction-order noise (~1e-10) on
    # near-zero gradients into weight differences of up to lr·noise/eps; with eps 1e-6 that stays ~1e-7, while a
    # real gradient error still flips update signs by 2·lr.
    settings = OptimizerSettings(lr=1e-3, warmup_steps=0, clip_grad=1.0, adam_eps=1e-6,
                                 distributed_optimizer=distributed_optimizer)
    ddp = build_ddp(load_hf(ckpt, dtype=dtype), distributed_optimizer=distributed_optimizer)
    optimizer = build_optimizer(ddp, settings)
    return ddp, optimizer, build_scheduler(optimizer, settings)


def step(trainer, step_index: int, dp_rank: int, dp_size: int, micro_batch_size: int = 2):
    ddp, optimizer, scheduler = trainer
    vocab = unwrap(ddp).model_config.vocab_size
    batches = micro_batches(global_batch(step_index, vocab), dp_rank, dp_size, micro_batch_size)
    return train_step(ddp, optimizer, scheduler, batches, next_token_cross_entropy)


def packed_micro_batches(vocab: int, dp_rank: int, dp_size: int) -> list[MicroBatch]:
    """This DP rank's contiguous share of a packed global batch: 2 micro-batches of 2 rows, 3 conversations to
    a row, loss on response tokens only; T = 23 is odd, so sequence parallelism pads it."""
    from tests.training import packed_fixtures as pf

    convs = pf.conversations(vocab, seed=11, lengths=pf.LENGTHS * 2)
    batches = [pf.packed(convs[i:i + 6], T=23)[0] for i in (0, 6)]
    return batches[dp_rank * len(batches) // dp_size:(dp_rank + 1) * len(batches) // dp_size]


def packed_loss_and_grads(trainer, dp_rank: int, dp_size: int) -> tuple[float, dict]:
    """Global loss and this rank's gradient shards (global_shards of the gradients) of one forward/backward of the
    packed batch through train_step's own schedule (padding, model_forward, finalize_model_grads: DP/SP
    all-reduces and the division by the global token count), without the optimizer step."""
    ddp = trainer[0]
    batches = packed_micro_batches(unwrap(ddp).model_config.vocab_size, dp_rank, dp_size)
    ddp.train()
    ddp.zero_grad_buffer()
    records = step_module._run_schedule(ddp, batches, next_token_cross_entropy, forward_only=False)
    return step_module._global_loss(records)[0], global_shards(ddp, grads=True)


def max_param_diff(model, reference) -> float:
    """Max |difference| over this rank's parameters and buffers (e.g. the updated expert bias)."""
    ours, theirs = _local_tensors(unwrap(model)), _local_tensors(unwrap(reference))
    return max((ours[name].float() - theirs[name].float()).abs().max().item() for name in ours)


def global_shards(model, grads: bool = False) -> dict:
    """{HF tensor name: ((dim, rank, world) or None, tensor)} for this rank's part of the model (of its
    parameters' gradients, DDP's main_grad, with grads=True).

    In HF space a tensor-parallel rank's part is a plain chunk of each HF tensor (a Megatron fc1 shard is
    [gate_r; up_r], not a chunk of the TP1 fc1), so every rank's dump concatenates back to whole HF tensors.
    Plain tuples, so torch.load accepts them."""
    core = unwrap(model)
    placement = Placement.of_this_rank(core)
    rules = {rule.megatron: rule for rule in weight_rules(core.model_config)}
    out = {}
    for name, tensor in _local_tensors(core).items():
        if grads and not isinstance(tensor, torch.nn.Parameter):
            continue  # buffers (the expert bias and its token counts) have no gradient
        rule, shard = rules[placement.global_name(name)], placement.shard(tensor)
        value = tensor.main_grad if grads else tensor
        for hf_name, part in zip(rule.hf, rule.transform.to_hf(value.detach())):
            out[hf_name] = ((shard.dim, shard.rank, shard.world) if shard else None, part.clone())
    return out


def assemble(dumps: list[dict]) -> dict[str, torch.Tensor]:
    """Whole tensors from the global_shards() of all ranks of a run."""
    parts: dict[str, dict] = {}
    for dump in dumps:
        for name, (shard, tensor) in dump.items():
            parts.setdefault(name, {})[shard[1] if shard else 0] = (shard, tensor)
    whole = {}
    for name, by_rank in parts.items():
        shard = by_rank[0][0]
        whole[name] = by_rank[0][1] if shard is None else torch.cat(
            [by_rank[r][1] for r in range(shard[2])], dim=shard[0])
    return whole


def max_diff_to_whole(model, whole: dict[str, torch.Tensor], grads: bool = False) -> float:
    """Max |difference| between this rank's tensors (or gradients) and the matching slices of whole tensors."""
    worst = 0.0
    for name, (shard, tensor) in global_shards(model, grads).items():
        expected = whole[name] if shard is None else whole[name].chunk(shard[2], dim=shard[0])[shard[1]]
        worst = max(worst, (tensor.float() - expected.float()).abs().max().item())
    return worst
