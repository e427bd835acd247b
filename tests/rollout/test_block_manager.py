"""The paged cache's block bookkeeping, by hand: free list, growth, sharing by reference count, copy-on-write."""
import pytest

from r1_megatron.rollout.block_manager import BlockCopy, BlockManager


def test_grow_takes_blocks_as_positions_are_needed_and_free_returns_them():
    bm = BlockManager(num_blocks=6, block_size=4)  # block 0 is scratch: 5 usable
    assert bm.num_free == 5
    seq = []
    assert bm.grow(seq, 0, 5) == []  # positions 0..4: two blocks
    assert seq == [1, 2] and bm.num_free == 3
    assert bm.grow(seq, 5, 8) == [] and seq == [1, 2]  # still inside block 2
    bm.grow(seq, 8, 9)
    assert seq == [1, 2, 3] and bm.num_free == 2
    bm.free(seq)
    assert seq == [] and bm.num_free == 5 and 0 not in bm.free_blocks


def test_a_fork_shares_blocks_and_the_first_write_into_a_shared_block_copies_it():
    bm = BlockManager(num_blocks=8, block_size=4)
    leader = []
    bm.grow(leader, 0, 6)  # a 6-token prompt: block 1 full, block 2 half
    sibling = bm.fork(leader)
    assert sibling == leader == [1, 2] and bm.ref_counts[1] == bm.ref_counts[2] == 2
    assert bm.writes_shared(sibling, 6) and not bm.writes_shared(sibling, 8)
    assert bm.room(sibling, 6) == (2 + 5 - 1) * 4 - 6  # 5 free blocks, one goes to the copy
    copies = bm.grow(sibling, 6, 7)  # writes position 6, inside shared block 2
    assert copies == [BlockCopy(src=2, dst=3)] and sibling == [1, 3]
    assert bm.ref_counts[2] == 1 and bm.ref_counts[1] == 2
    assert bm.grow(leader, 6, 7) == []  # the leader now holds block 2 alone: it writes in place
    bm.free(leader)
    assert bm.ref_counts[1] == 1 and bm.num_free == 5  # block 2 freed, block 1 still the sibling's
    bm.free(sibling)
    assert bm.num_free == 7


def test_a_fork_of_a_prompt_ending_on_a_block_boundary_copies_nothing():
    bm = BlockManager(num_blocks=8, block_size=4)
    leader = []
    bm.grow(leader, 0, 8)
    sibling = bm.fork(leader)
    assert not bm.writes_shared(sibling, 8)
    assert bm.grow(sibling, 8, 9) == [] and sibling == [1, 2, 3]


def test_room_counts_what_the_free_blocks_hold():
    bm = BlockManager(num_blocks=3, block_size=4)
    seq = []
    assert bm.room(seq, 0) == 8
    bm.grow(seq, 0, 7)
    assert bm.room(seq, 7) == 1 and bm.num_free == 0


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="num_blocks >= 2"):
        BlockManager(num_blocks=1, block_size=4)
