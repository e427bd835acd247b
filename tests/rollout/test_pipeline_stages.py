"""How a step's chunks are cut into pipeline micro-batches (hand values; the multi-process generation itself is
tests/parallel/test_generate_layouts.py)."""
import pytest

from r1_megatron.rollout.pipeline_stages import split_micro_batches
from r1_megatron.rollout.scheduler import Chunk
from r1_megatron.rollout.sequence import Sequence
from r1_megatron.rollout.sampling_params import SamplingParams


def chunks(*sizes: int) -> list[Chunk]:
    seq = Sequence(0, 0, [1] * 100, SamplingParams(), 0, frozenset())
    return [Chunk(seq, 10, 10 + size) for size in sizes]


def sizes(parts) -> list[list[int]]:
    return [[c.end - c.start for c in part] for part in parts]


@pytest.mark.parametrize("chunk_sizes, count, want", [
    ((1,) * 6, 2, [[1, 1, 1], [1, 1, 1]]),  # decode rows: equal halves
    ((1,) * 7, 3, [[1, 1, 1], [1, 1], [1, 1]]),  # part j ends where the sum reaches (j + 1)·7/3
    ((1, 1), 4, [[1], [1]]),  # fewer chunks than micro-batches: one each
    ((1, 1, 8), 2, [[1, 1, 8]]),  # a long prefill chunk is never cut: fewer parts
    ((1, 1, 1, 1, 4), 2, [[1, 1, 1, 1], [4]]),  # the decode rows, then the prefill chunk on its own
    ((5,), 3, [[5]]),
    ((), 2, []),  # no chunks, no micro-batches
])
def test_split_micro_batches(chunk_sizes, count, want):
    given = chunks(*chunk_sizes)
    parts = split_micro_batches(given, count)
    assert sizes(parts) == want
    assert [c for part in parts for c in part] == given  # contiguous, plan order kept
