"""Padding and packing sequences into MicroBatches: positions/segments by hand, whole sequences per row, the budget
error, efficiency, determinism, extras, and pad_batches' shapes and masks."""
import random

import pytest
import torch

from r1_megatron.data.sft_dataset import SFTExample
from r1_megatron.training.packing import (TrainSequence, extend_to, first_fit_decreasing, pack_batches, pad_batches,
                                          packing_stats)

PAD = 0
A = TrainSequence([10, 11, 12, 13], [0.0, 1.0, 1.0], {"old_logp": [-0.1, -0.2, -0.3]})  # 3 positions
B = TrainSequence([20, 21, 22], [1.0, 1.0], {"old_logp": [-1.0, -2.0]})  # 2
C = TrainSequence([30, 31, 32, 33, 34, 35], [0.0, 0.0, 1.0, 1.0, 1.0], {"old_logp": [-3.0] * 5})  # 5
D = TrainSequence([40, 41], [1.0], {"old_logp": [-4.0]})  # 1
SEQS = [A, B, C, D]


def rows_of(batches, name):
    return [row for mb in batches for row in getattr(mb, name).tolist()]


def test_pack_by_hand():
    # first-fit decreasing over positions 3, 2, 5, 1 with 6 per row: C -> row 0, A -> row 1, B -> row 1, D -> row 0
    assert first_fit_decreasing([3, 2, 5, 1], 6) == [[2, 3], [0, 1]]
    batches = pack_batches(SEQS, 6, PAD)
    assert [mb.shape for mb in batches] == [(1, 6), (1, 6)] and all(mb.packed for mb in batches)
    assert rows_of(batches, "input_ids") == [[30, 31, 32, 33, 34, 40], [10, 11, 12, 20, 21, PAD]]
    assert rows_of(batches, "labels") == [[31, 32, 33, 34, 35, 41], [11, 12, 13, 21, 22, PAD]]
    assert rows_of(batches, "position_ids") == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 0, 1, 2]]  # padding continues
    assert rows_of(batches, "segment_ids") == [[1, 1, 1, 1, 1, 2], [1, 1, 1, 2, 2, 0]]
    assert rows_of(batches, "loss_mask") == [[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0]]
    old = torch.cat([mb.extras["old_logp"] for mb in batches])
    assert torch.allclose(old, torch.tensor([[-3.0] * 5 + [-4.0], [-0.1, -0.2, -0.3, -1.0, -2.0, 0.0]]))
    assert batches[0].input_ids.dtype == torch.long and batches[0].loss_mask.dtype == torch.float32


def test_rows_per_micro_batch_and_efficiency():
    two = pack_batches(SEQS, 6, PAD, rows=2)
    assert [mb.shape for mb in two] == [(2, 6)]
    assert packing_stats(SEQS, two).efficiency == pytest.approx(11 / 12)
    three = pack_batches(SEQS, 6, PAD, rows=3)
    assert three[0].segment_ids[2].tolist() == [0] * 6 and three[0].loss_mask[2].sum() == 0  # an empty row
    assert three[0].position_ids[2].tolist() == [0, 1, 2, 3, 4, 5]
    stats = packing_stats(SEQS, three)
    assert (stats.real_tokens, stats.computed_tokens, stats.trained_tokens) == (11, 18, 8)
    assert stats.metrics() == {"packing/efficiency": pytest.approx(11 / 18), "packing/micro_batches": 1.0,
                               "packing/real_tokens": 11.0, "packing/trained_tokens": 8.0}
    padded = pad_batches(SEQS, 2, 6, PAD)
    assert packing_stats(SEQS, padded).efficiency == pytest.approx(11 / 24)
    assert packing_stats([], []).efficiency == 0.0


def test_budget_error_names_length_and_budget():
    with pytest.raises(ValueError, match=r"sequence 2 fills 5 positions \(len\(tokens\) - 1\), more than "
                                         r"max_tokens_per_micro_batch=4"):
        pack_batches(SEQS, 4, PAD)
    with pytest.raises(ValueError, match=r"sequence 2 fills 5 positions .* more than seq_len=4"):
        pad_batches(SEQS, 2, 4, PAD)


def random_seqs(seed, n=60):
    rng = random.Random(seed)
    seqs = []
    for i in range(n):
        length = rng.randint(2, 40)
        tokens = [rng.randrange(1, 1000) for _ in range(length)]
        seqs.append(TrainSequence(tokens, [float(rng.random() < 0.5) for _ in range(length - 1)],
                                  {"adv": [float(i)] * (length - 1)}))
    return seqs


def unpack(batches):
    """Every sequence read back from the rows: (tokens, loss_mask, extras) per (row, segment)."""
    out = []
    for mb in batches:
        for b in range(mb.shape[0]):
            seg = mb.segment_ids[b]
            for s in sorted(set(seg.tolist()) - {0}):
                where = (seg == s).nonzero().flatten()
                assert where.tolist() == list(range(int(where[0]), int(where[-1]) + 1))  # contiguous in one row
                assert mb.position_ids[b, where].tolist() == list(range(len(where)))
                tokens = mb.input_ids[b, where].tolist() + [int(mb.labels[b, where[-1]])]
                out.append((tokens, mb.loss_mask[b, where].tolist(), mb.extras["adv"][b, where].tolist()))
    return out


def test_every_sequence_whole_in_one_row_and_deterministic():
    seqs = random_seqs(0)
    batches = pack_batches(seqs, 64, PAD, rows=2)
    assert len({mb.shape for mb in batches}) == 1
    key = lambda t: (t[0], t[1], t[2])  # noqa: E731
    assert sorted(unpack(batches), key=key) == sorted(((s.tokens, s.loss_mask, s.extras["adv"]) for s in seqs),
                                                     key=key)
    for mb in batches:
        assert bool(((mb.segment_ids == 0) <= (mb.loss_mask == 0)).all())  # padding never trained
    again = pack_batches(seqs, 64, PAD, rows=2)
    for x, y in zip(batches, again, strict=True):
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.segment_ids, y.segment_ids)
    stats = packing_stats(seqs, batches)
    assert stats.real_tokens == sum(len(s.tokens) - 1 for s in seqs)
    assert stats.efficiency > 0.9  # first-fit decreasing of 1-39 positions into 64


def test_pad_batches_shapes_and_masks():
    batches = pad_batches([A, B, C], micro_batch_size=2, seq_len=6, pad_id=PAD)
    assert [mb.shape for mb in batches] == [(2, 6), (2, 6)]
    assert all(mb.position_ids is None and mb.segment_ids is None for mb in batches)
    assert rows_of(batches, "input_ids") == [[10, 11, 12, PAD, PAD, PAD], [20, 21, PAD, PAD, PAD, PAD],
                                             [30, 31, 32, 33, 34, PAD], [PAD] * 6]
    assert rows_of(batches, "labels") == [[11, 12, 13, PAD, PAD, PAD], [21, 22, PAD, PAD, PAD, PAD],
                                          [31, 32, 33, 34, 35, PAD], [PAD] * 6]
    assert rows_of(batches, "loss_mask") == [[0, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0], [0] * 6]
    assert batches[1].extras["old_logp"].tolist() == [[-3.0] * 5 + [0.0], [0.0] * 6]
    assert batches[1].positions().tolist() == [list(range(6))] * 2
    assert pad_batches([], 2, 6, PAD) == []


def test_sft_examples_pack_as_they_are():
    examples = [SFTExample([1, 2, 3], [0.0, 1.0], "f:1"), SFTExample([4, 5], [1.0], "f:2")]
    mb, = pack_batches(examples, 4, PAD)
    assert mb.input_ids.tolist() == [[1, 2, 4, PAD]] and mb.loss_mask.tolist() == [[0, 1, 1, 0]]
    assert mb.extras == {}


def test_bad_sequences():
    with pytest.raises(ValueError, match=r"TrainSequence: loss_mask has 3 entries, expected len\(tokens\) - 1 = 2"):
        TrainSequence([1, 2, 3], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="TrainSequence has 1 tokens: a training sequence needs at least 2"):
        TrainSequence([1], [])
    with pytest.raises(ValueError, match=r"TrainSequence: extras\['adv'\] has 1 entries"):
        TrainSequence([1, 2, 3], [1.0, 1.0], {"adv": [1.0]})
    with pytest.raises(ValueError, match=r"sequence 1 has extras \[\], sequence 0 has \['old_logp'\]"):
        pack_batches([A, TrainSequence([1, 2], [1.0])], 8, PAD)


def test_extend_to_for_data_parallel_ranks():
    batches = pack_batches(SEQS, 6, PAD, rows=2)
    extended = extend_to(batches, 3, PAD)
    assert len(extended) == 3 and extended[0] is batches[0]
    empty = extended[2]
    assert empty.shape == (2, 6) and empty.packed and empty.loss_mask.sum() == 0
    assert empty.segment_ids.sum() == 0 and set(empty.extras) == {"old_logp"}
    with pytest.raises(ValueError, match="there are already 1 micro-batches"):
        extend_to(batches, 0, PAD)
