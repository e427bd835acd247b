"""One supervised step, shared by `r1-megatron train sft` and GRPO's warm start: this rank's sequences →
micro-batches (padded, or packed by a token budget) → forward/backward with the masked next-token cross-entropy
normalised over the global batch's trained tokens → one optimizer step. And the same loss without a step, for
validation."""
from __future__ import annotations

import dataclasses


from r1_megatron.runtime import world_max
from r1_megatron.training.losses import next_token_cross_entropy
from r1_megatron.training.micro_batch import MicroBatch
from r1_megatron.training.packing import TrainSequence, empty_batch, extend_to, pack_batches, pad_batches
from r1_megatron.training.step import StepResult, loss_only, train_step


@dataclasses.dataclass
class Batching:
    """How a step's sequences become micro-batches: `micro_batch_size` rows each; with
    `max_tokens_per_micro_batch` (packing) every row holds several sequences up to that many tokens, otherwise
    each row holds one sequence, right-padded to the step's longest."""

    micro_batch_size: int = 8
    max_tokens_per_micro_batch: int | None = None

    def __post_init__(self):
        if not isinstance(self.micro_batch_size, int) or self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be a positive integer, got {self.micro_batch_size!r}")
        budget = self.max_tokens_per_micro_batch
        if budget is not None and (not isinstance(budget, int) or budget < 2):
            raise ValueError(f"max_tokens_per_micro_batch must be an integer >= 2 (or null: no packing), got "
                             f"{budget!r}")

    @property
    def packing(self) -> bool:
        return self.max_tokens_per_micro_batch is not None


@dataclasses.dataclass
class SFTStepResult:
    step: StepResult
    tokens: int  # real input positions this rank computed
    computed: int  # input positions this rank computed, padding included


def micro_batches(seqs: list[TrainSequence], batching: Batching, pad_id: int) -> list[MicroBatch]:
    """This rank's micro-batches; the count is the same on every rank (expert-parallel all-to-alls pair up the
    forwards), short ranks run empty micro-batches (no loss tokens, no gradient)."""
    if batching.packing:
        out = pack_batches(seqs, batching.max_tokens_per_micro_batch, pad_id, rows=batching.micro_batch_size)
    else:
        seq_len = max((len(s.tokens) - 1 for s in seqs), default=1)
        out = pad_batches(seqs, batching.micro_batch_size, seq_len, pad_id)
    count = world_max(len(out))
    if not out and count:  # no examples on this rank this step
        out = [empty_batch(batching.micro_batch_size, batching.max_tokens_per_micro_batch or 1, pad_id,
                           packed=batching.packing)]
    return extend_to(out, count, pad_id) if count else out


def sft_step(policy, optimizer, scheduler, seqs: list[TrainSequence], batching: Batching, pad_id: int,
             device) -> SFTStepResult:
    """One optimizer step on this rank's share `seqs` of the global batch."""
    batches = [mb.to(device) for mb in micro_batches(seqs, batching, pad_id)]
    result = train_step(policy, optimizer, scheduler, batches, next_token_cross_entropy)
    return SFTStepResult(result, tokens=sum(len(s.tokens) - 1 for s in seqs),
                         computed=sum(mb.input_ids.numel() for mb in batches))


def sft_loss(policy, seqs: list[TrainSequence], batching: Batching, pad_id: int, device) -> tuple[float, int]:
    """(mean loss over every trained token of all ranks' `seqs`, that token count), without a step."""
    batches = [mb.to(device) for mb in micro_batches(seqs, batching, pad_id)]
    return loss_only(policy, batches, next_token_cross_entropy)
