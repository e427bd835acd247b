"""Continuous batching over the paged KV cache: a token budget per step, chunked prefill, preemption.

Every step computes, for each scheduled sequence, a chunk of its tokens that have no keys/values in the cache
yet: one token for a decoding sequence (its last sampled token), up to the budget for a prompt being prefilled
(a long prompt is prefilled over several steps, between the decode steps of the others). A chunk that reaches
the sequence's end samples the next token.

Order: running sequences first, in admission order, then waiting ones, in arrival order, while the step's token
budget (`max_tokens_per_step`), the sequence slots (`max_num_seqs`) and free cache blocks last. A prompt's n
samples are admitted together as one leader carrying its siblings: the leader prefills the prompt once, and the
siblings are forked when the prompt is computed, sharing its blocks. A group larger than max_num_seqs is split
into parts of at most max_num_seqs, each prefilled once.

When a running sequence needs a block and none is free, the most recently admitted running sequence is
preempted: its blocks are freed and it goes back to the front of the waiting queue with its generated tokens,
to be prefilled again later (recompute). Sampling noise depends only on (seed, step, token id), so a preempted
sequence continues exactly as it would have.
"""
from __future__ import annotations

import collections
import dataclasses

from .block_manager import BlockCopy, BlockManager
from .sequence import Sequence


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Tokens [start, end) of `seq` are computed this step; samples: the step samples seq's next token."""

    seq: Sequence
    start: int
    end: int

    @property
    def samples(self) -> bool:
        return self.end == self.seq.length


@dataclasses.dataclass
class StepPlan:
    chunks: list[Chunk]  # one-token chunks first, then longer ones
    copies: list[BlockCopy]  # copy-on-write block copies to do before the forward


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_tokens_per_step: int):
        self.blocks, self.max_num_seqs, self.max_tokens_per_step = blocks, max_num_seqs, max_tokens_per_step
        self.free_rows = collections.deque(range(max_num_seqs))
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, group: list[Sequence]) -> None:
        """The n samples of one prompt (same prompt ids), in sample order."""
        for start in range(0, len(group), self.max_num_seqs):
            leader, *siblings = group[start:start + self.max_num_seqs]
            leader.siblings = siblings
            self.waiting.append(leader)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> StepPlan | None:
        """The chunks of the next step; None when nothing can run (no work)."""
        chunks, copies = [], []
        budget, preempted = self._schedule_running(self.max_tokens_per_step, chunks, copies)
        if not preempted:  # admitting new prompts while evicting running ones would only thrash
            self._admit(budget, chunks, copies)
        if not chunks:
            return None
        chunks.sort(key=lambda c: c.end - c.start > 1)  # stable: decode rows first, each group in order
        return StepPlan(chunks, copies)

    def computed(self, plan: StepPlan) -> list[tuple[Sequence, int]]:
        """Record the step's chunks as computed; fork the siblings of prompts now complete. Returns the sequences
        that sample now, each with the index of its logits row (chunks that sample, in plan order; a leader's
        siblings share its row)."""
        sampling = []
        rows = 0
        for chunk in plan.chunks:
            chunk.seq.num_computed = chunk.end
            if chunk.samples:
                sampling.append((chunk.seq, rows))
                sampling.extend((sibling, rows) for sibling in self._fork_siblings(chunk.seq))
                rows += 1
        return sampling

    def release_finished(self) -> list[Sequence]:
        """Free the blocks and rows of finished sequences; returns them."""
        done = [seq for seq in self.running if seq.finished]
        for seq in done:
            self._release(seq)
        self.running = [seq for seq in self.running if not seq.finished]
        return done

    def abort(self, seq: Sequence, leader: Sequence | None = None) -> None:
        """Take seq out of the schedule and free what it holds (its finish reason is the caller's to set).
        leader: the group leader whose unforked siblings include seq (None when seq is no such sibling). An
        aborted leader with unforked siblings hands its place, blocks and computed prompt to the first of them
        (a leader with unforked siblings has sampled nothing yet, so they are interchangeable)."""
        if leader is not None:
            leader.siblings.remove(seq)
            if seq.row is not None:
                self.free_rows.append(seq.row)
                seq.row = None
            return
        if seq.siblings:
            heir, *heir.siblings = seq.siblings
            seq.siblings = []
            heir.block_ids, heir.num_computed, seq.block_ids = seq.block_ids, seq.num_computed, []
            heir.routing, seq.routing = seq.routing, None
            self._replace(seq, heir)
        elif seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._release(seq)

    # ------------------------------------------------------------------------------------------- helpers

    def _replace(self, seq: Sequence, heir: Sequence) -> None:
        for queue in (self.running, self.waiting):
            if seq in queue:
                queue[queue.index(seq)] = heir
                return

    def _schedule_running(self, budget: int, chunks: list[Chunk], copies: list) -> tuple[int, bool]:
        """A chunk for each running sequence, in admission order, while the budget lasts; when blocks run out the
        newest running sequence is preempted (this one too, if it is the newest). Returns (budget left, whether
        any sequence was preempted)."""
        preempted, i = False, 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if self._decodes_in_place(seq):  # the common step, with no block work: one token, own block
                chunks.append(Chunk(seq, seq.num_computed, seq.num_computed + 1))
                budget, i = budget - 1, i + 1
                continue
            take = self._fit(seq, min(seq.length - seq.num_computed, budget))
            while take == 0 and self.running[-1] is not seq:
                self._preempt(self.running[-1])
                preempted = True
                take = self._fit(seq, min(seq.length - seq.num_computed, budget))
            if take == 0:
                if len(self.running) == 1:
                    raise RuntimeError("KV cache: one sequence alone does not fit the free blocks")
                self._preempt(seq)
                return budget, True
            chunks.append(self._chunk(seq, take, copies))
            budget, i = budget - take, i + 1
        return budget, preempted

    def _decodes_in_place(self, seq: Sequence) -> bool:
        """seq computes one token whose position falls in a block it already holds alone."""
        position = seq.num_computed
        index = position // self.blocks.block_size
        return position == seq.length - 1 and index < len(seq.block_ids) and \
            self.blocks.ref_counts[seq.block_ids[index]] == 1

    def _admit(self, budget: int, chunks: list[Chunk], copies: list[BlockCopy]) -> None:
        while self.waiting and budget > 0:
            leader = self.waiting[0]
            if len(self.free_rows) < 1 + len(leader.siblings):
                break
            take = self._fit(leader, min(leader.length, budget))
            if take == 0:
                break
            self.waiting.popleft()
            for seq in (leader, *leader.siblings):
                seq.row = self.free_rows.popleft()
            self.running.append(leader)
            chunks.append(self._chunk(leader, take, copies))
            budget -= take

    def _fit(self, seq: Sequence, want: int) -> int:
        """The most tokens, up to want, that seq's next chunk can take with the free blocks."""
        return min(want, self.blocks.room(seq.block_ids, seq.num_computed))

    def _chunk(self, seq: Sequence, take: int, copies: list[BlockCopy]) -> Chunk:
        copies.extend(self.blocks.grow(seq.block_ids, seq.num_computed, seq.num_computed + take))
        return Chunk(seq, seq.num_computed, seq.num_computed + take)

    def _fork_siblings(self, leader: Sequence) -> list[Sequence]:
        if not leader.siblings:
            return []
        siblings, leader.siblings = leader.siblings, []
        for sibling in siblings:
            sibling.block_ids = self.blocks.fork(leader.block_ids)
            sibling.num_computed = leader.num_computed
            if leader.routing is not None:
                sibling.routing = leader.routing.fork(leader.num_computed)
        index = self.running.index(leader) + 1
        self.running[index:index] = siblings
        return siblings

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.num_computed = 0
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _release(self, seq: Sequence) -> None:
        self.blocks.free(seq.block_ids)
        for s in (seq, *seq.siblings):
            if s.row is not None:
                self.free_rows.append(s.row)
                s.row = None
