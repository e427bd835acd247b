"""The micro-batch builders (rollout_batch.py, training/packing.py) give bit for bit what the per-row loops they
replaced gave, kept here as the reference: random rollouts, truncated samples with and without mask_truncated,
short last micro-batches (empty rows), packed rows for every loss aggregation, and plain SFT sequences."""
import random

import pytest
import torch

from r1_megatron.grpo.rollout_batch import (RolloutSample, _train_sequence, empty_micro_batch, micro_batches,
                                             packed_micro_batches)
from r1_megatron.kernels.options import LossAgg
from r1_megatron.training.micro_batch import MicroBatch
from r1_megatron.training.packing import (TrainSequence, _extras_keys, first_fit_decreasing, flat_tensor,
                                          pack_batches, pad_batches)

PAD = 7


# ---- the reference: the loops as they were --------------------------------------------------------------------

def loop_rollout_micro_batch(rows, seq_len, pad_id, mask_truncated):
    B = len(rows)
    ids_BT = torch.full((B, seq_len + 1), pad_id, dtype=torch.int64)
    mask_BT = torch.zeros(B, seq_len)
    old_BT = torch.zeros(B, seq_len)
    adv_B, valid_B = torch.zeros(B), torch.zeros(B)
    for b, s in enumerate(rows):
        if s is None:
            continue
        valid_B[b] = 1.0
        x = s.prompt_ids + s.completion_ids
        ids_BT[b, :len(x)] = torch.tensor(x)
        first, n = len(s.prompt_ids) - 1, len(s.completion_ids)
        old_BT[b, first:first + n] = torch.tensor(s.rollout_logprobs)
        mask_BT[b, first:first + n] = 0.0 if (mask_truncated and s.truncated) else 1.0
        adv_B[b] = s.advantage
    return MicroBatch(ids_BT[:, :-1], ids_BT[:, 1:], mask_BT,
                      extras={"old_logprobs": old_BT, "advantages": adv_B, "valid": valid_B})


def loop_micro_batches(samples, micro_batch_size, seq_len, pad_id, mask_truncated):
    out = []
    for start in range(0, len(samples), micro_batch_size):
        chunk = samples[start:start + micro_batch_size]
        chunk = chunk + [None] * (micro_batch_size - len(chunk))
        out.append(loop_rollout_micro_batch(chunk, seq_len, pad_id, mask_truncated))
    return out


def loop_packing_micro_batch(rows, T, pad_id, keys, packed):
    B = len(rows)
    mb = MicroBatch(torch.full((B, T), pad_id, dtype=torch.long), torch.full((B, T), pad_id, dtype=torch.long),
                    torch.zeros(B, T), torch.zeros(B, T, dtype=torch.long), torch.zeros(B, T, dtype=torch.long),
                    {k: torch.zeros(B, T) for k in keys})
    for b, row in enumerate(rows):
        t = 0
        for segment, seq in enumerate(row, start=1):
            n = len(seq.tokens) - 1
            mb.input_ids[b, t:t + n] = torch.tensor(seq.tokens[:-1], dtype=torch.long)
            mb.labels[b, t:t + n] = torch.tensor(seq.tokens[1:], dtype=torch.long)
            mb.loss_mask[b, t:t + n] = torch.tensor(seq.loss_mask, dtype=torch.float32)
            mb.position_ids[b, t:t + n] = torch.arange(n)
            mb.segment_ids[b, t:t + n] = segment
            for key, values in seq.extras.items():
                mb.extras[key][b, t:t + n] = torch.tensor(values, dtype=torch.float32)
            t += n
        start = int(mb.position_ids[b, t - 1]) + 1 if t else 0
        mb.position_ids[b, t:] = torch.arange(start, start + mb.shape[1] - t)
    if not packed:
        mb.position_ids = mb.segment_ids = None
    return mb


def loop_pack_batches(seqs, max_tokens, pad_id, rows):
    keys = _extras_keys(seqs)
    bins = first_fit_decreasing([len(s.tokens) - 1 for s in seqs], max_tokens)
    packed_rows = [[seqs[i] for i in b] for b in bins]
    packed_rows += [[]] * (-len(packed_rows) % rows)
    return [loop_packing_micro_batch(packed_rows[i:i + rows], max_tokens, pad_id, keys, packed=True)
            for i in range(0, len(packed_rows), rows)]


def loop_pad_batches(seqs, micro_batch_size, seq_len, pad_id):
    keys = _extras_keys(seqs)
    rows = [[s] for s in seqs]
    rows += [[]] * (-len(rows) % micro_batch_size)
    return [loop_packing_micro_batch(rows[i:i + micro_batch_size], seq_len, pad_id, keys, packed=False)
            for i in range(0, len(rows), micro_batch_size)]


# ---- comparisons ----------------------------------------------------------------------------------------------

def assert_same_bits(got: torch.Tensor, want: torch.Tensor, what: str):
    assert (got.dtype, got.shape) == (want.dtype, want.shape), what
    if got.is_floating_point():  # -0.0 vs 0.0 or a rounding difference would show in the bits
        got, want = got.view(torch.int32), want.view(torch.int32)
    assert torch.equal(got, want), what


def assert_identical(got: list[MicroBatch], want: list[MicroBatch]):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        for name in ("input_ids", "labels", "loss_mask", "position_ids", "segment_ids"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None), (i, name)
            if x is not None:
                assert_same_bits(x, y, f"micro-batch {i} {name}")
        assert a.extras.keys() == b.extras.keys()
        for key in a.extras:
            assert_same_bits(a.extras[key], b.extras[key], f"micro-batch {i} extras[{key!r}]")


def rollout(n: int, seed: int, max_prompt: int = 9, max_completion: int = 14) -> list[RolloutSample]:
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        prompt = [rng.randrange(50000) for _ in range(rng.randint(1, max_prompt))]
        completion = [rng.randrange(50000) for _ in range(rng.randint(1, max_completion))]
        samples.append(RolloutSample(prompt, completion, [-rng.expovariate(1.0) for _ in completion],
                                     rng.random(), rng.gauss(0, 1), truncated=i % 3 == 1 or rng.random() < 0.2,
                                     prompt_index=i // 4))
    return samples


def longest(samples) -> int:
    return max(len(s.prompt_ids) + len(s.completion_ids) - 1 for s in samples)


# ---- tests ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mask_truncated", [True, False])
def test_padded_rollout_micro_batches_match_the_loop(seed, mask_truncated):
    rng = random.Random(seed)
    samples = rollout(rng.randint(1, 23), seed)
    micro_batch_size = rng.randint(1, 6)  # mostly not dividing the count: a last micro-batch with empty rows
    seq_len = longest(samples) + rng.choice([0, 0, 3])
    got = micro_batches(samples, micro_batch_size, seq_len, pad_id=PAD, mask_truncated=mask_truncated)
    assert_identical(got, loop_micro_batches(samples, micro_batch_size, seq_len, PAD, mask_truncated))


def test_padded_edges_match_the_loop():
    assert micro_batches([], 4, 8, pad_id=PAD, mask_truncated=True) == []
    assert_identical([empty_micro_batch(3, 5)], [loop_rollout_micro_batch([None] * 3, 5, 0, False)])
    one = rollout(1, 0)  # one row, as long as seq_len allows (x fills seq_len + 1 ids)
    assert_identical(micro_batches(one, 1, longest(one), pad_id=PAD, mask_truncated=False),
                     loop_micro_batches(one, 1, longest(one), PAD, False))
    lone = [RolloutSample([5], [6], [-0.5], 1.0, 0.25, truncated=True, prompt_index=0)]  # 1-token prompt, completion
    assert_identical(micro_batches(lone, 3, 4, pad_id=PAD, mask_truncated=True),
                     loop_micro_batches(lone, 3, 4, PAD, True))


def test_padded_rejects_what_does_not_fit():
    s = rollout(1, 0)[0]
    with pytest.raises(ValueError, match=r"does not fit seq_len"):
        micro_batches([s], 1, longest([s]) - 1, pad_id=PAD, mask_truncated=False)
    bad = RolloutSample(s.prompt_ids, s.completion_ids, s.rollout_logprobs[:-1], 0.0, 0.0, False, 0)
    with pytest.raises(ValueError, match=rf"{len(s.completion_ids) - 1} logprobs for {len(s.completion_ids)} "):
        micro_batches([bad], 1, longest([s]), pad_id=PAD, mask_truncated=False)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("agg", list(LossAgg))
def test_packed_rollout_micro_batches_match_the_loop(seed, agg):
    rng = random.Random(seed)
    samples = rollout(rng.randint(1, 30), seed)
    rows, max_tokens = rng.randint(1, 3), longest(samples) + rng.randint(0, 20)
    mask_truncated = seed % 2 == 0
    got = packed_micro_batches(samples, rows, max_tokens, pad_id=PAD, mask_truncated=mask_truncated,
                               loss_agg=agg, norm_length=16)
    seqs = [_train_sequence(s, mask_truncated, agg, 16) for s in samples]  # not what changed: the same input
    assert_identical(got, loop_pack_batches(seqs, max_tokens, PAD, rows))
    assert max(int(mb.segment_ids.max()) for mb in got) > 1  # rows do hold several sequences


def sequences(n: int, seed: int, keys=("old_logp",)) -> list[TrainSequence]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens = [rng.randrange(1000) for _ in range(rng.randint(2, 17))]
        mask = [rng.choice([0.0, 1.0, 0.5, 1 / 3]) for _ in tokens[1:]]
        out.append(TrainSequence(tokens, mask, {k: [rng.uniform(-5, 5) for _ in tokens[1:]] for k in keys}))
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("keys", [(), ("a", "old_logp")])
def test_sft_pack_and_pad_match_the_loop(seed, keys):
    rng = random.Random(seed)
    seqs = sequences(rng.randint(0, 25), seed, keys)
    budget = max((len(s.tokens) - 1 for s in seqs), default=1) + rng.randint(0, 30)
    rows = rng.randint(1, 4)
    assert_identical(pack_batches(seqs, budget, PAD, rows=rows), loop_pack_batches(seqs, budget, PAD, rows))
    assert_identical(pad_batches(seqs, rows, budget, PAD), loop_pad_batches(seqs, rows, budget, PAD))


def test_flat_tensor_rounds_as_torch_tensor_does():
    rng = random.Random(0)
    values = [rng.uniform(-1, 1) * 10 ** rng.randint(-40, 38) for _ in range(5000)]
    values += [0.0, -0.0, 1e-46, -1e-45, 2 ** -149, 1.0000000596046448, float("inf"), True, 3]
    lists = [values[i:i + 37] for i in range(0, len(values), 37)]
    assert_same_bits(flat_tensor(lists, len(values), torch.float32), torch.tensor(values, dtype=torch.float32),
                     "float32")
    ints = [[rng.randrange(-2 ** 62, 2 ** 62) for _ in range(rng.randint(0, 9))] for _ in range(50)]
    flat = [x for xs in ints for x in xs]
    assert_same_bits(flat_tensor(ints, len(flat), torch.long), torch.tensor(flat, dtype=torch.long), "int64")
