"""The paged KV cache's bookkeeping: which cache blocks each sequence owns (vLLM's block manager).

The cache (models/kv_cache.py) is a pool of `num_blocks` blocks of `block_size` token positions each, in every
layer. A sequence owns a list of blocks, its block table: position p lives in block_ids[p // block_size] at
offset p % block_size. Blocks are taken from a free list as a sequence grows and returned when it finishes or
is preempted, so memory follows the tokens actually held rather than max_seq_len per sequence.

Prompt sharing: the n samples of a prompt are forked from the sequence that prefilled it; a fork shares every
block by reference count. A block is written only by a sequence that holds it alone: the first write into a
shared (partially filled) last block copies it into a fresh block first (copy-on-write), and the copy is
returned to the caller, who copies the cache contents before the forward.

Block 0 is never handed out: it is the scratch block that padding rows (CUDA-graph buckets) write into.
"""
from __future__ import annotations

import collections
import dataclasses

SCRATCH_BLOCK = 0
SCRATCH_BLOCKS = SCRATCH_BLOCK + 1  # blocks the pool holds beyond what sequences can take


@dataclasses.dataclass(frozen=True)
class BlockCopy:
    """Copy cache block `src` into block `dst` (every layer) before the next forward."""

    src: int
    dst: int


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 2 or block_size < 1:
            raise ValueError(f"BlockManager needs num_blocks >= 2 (block 0 is scratch) and block_size >= 1, got "
                             f"{num_blocks}, {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.free_blocks = collections.deque(range(SCRATCH_BLOCKS, num_blocks))
        self.ref_counts = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    def writes_shared(self, block_ids: list[int], num_computed: int) -> bool:
        """Whether writing position num_computed next falls in a block shared with another sequence (only that
        block can be: blocks before it are full and never written again, blocks after it are fresh)."""
        index = num_computed // self.block_size
        return index < len(block_ids) and self.ref_counts[block_ids[index]] > 1

    def room(self, block_ids: list[int], num_computed: int) -> int:
        """Positions from num_computed on that the sequence's blocks plus the free blocks can hold, after the
        copy of a shared block written into."""
        spare = self.num_free - int(self.writes_shared(block_ids, num_computed))
        return max(0, (len(block_ids) + spare) * self.block_size - num_computed)

    def grow(self, block_ids: list[int], num_computed: int, num_tokens: int) -> list[BlockCopy]:
        """Make `block_ids` hold positions [0, num_tokens) when positions num_computed.. are about to be written:
        copy the shared block that is written into (only the block of the first written position can be shared:
        blocks before it are never written again, blocks after it are fresh), append fresh blocks. Mutates
        block_ids; the caller checked num_tokens - num_computed <= room()."""
        copies = []
        if num_computed < num_tokens and self.writes_shared(block_ids, num_computed):
            index = num_computed // self.block_size
            fresh = self._take()
            copies.append(BlockCopy(block_ids[index], fresh))
            self._release(block_ids[index])
            block_ids[index] = fresh
        while len(block_ids) * self.block_size < num_tokens:
            block_ids.append(self._take())
        return copies

    def fork(self, block_ids: list[int]) -> list[int]:
        """A block table sharing every block of `block_ids` (the prompt's blocks for a sibling sample)."""
        for block in block_ids:
            self.ref_counts[block] += 1
        return list(block_ids)

    def free(self, block_ids: list[int]) -> None:
        """Drop a sequence's references; blocks nobody holds return to the free list."""
        for block in block_ids:
            self._release(block)
        block_ids.clear()

    def _take(self) -> int:
        block = self.free_blocks.popleft()
        self.ref_counts[block] = 1
        return block

    def _release(self, block: int) -> None:
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self.free_blocks.append(block)
