"""Continuous batching within a fixed number of KV-cache slots (nano-vllm's scheduler, without preemption).

Each step is either a prefill of newly admitted prompts or one decode token for every running sequence. Waiting
prompts are admitted, in arrival order, whenever enough slots are free: all n completions of a prompt together
(they share one prefill; its KV is copied to the siblings' slots), so a group waits until n slots are free.
A prompt whose n exceeds the slot count is split into slot-sized parts, each prefilled once.
"""
from __future__ import annotations

import collections
import dataclasses

from .sequence import Sequence


@dataclasses.dataclass
class PrefillBatch:
    groups: list[list[Sequence]]  # the sequences of one prompt; groups[i][0]'s slot receives the prefill


@dataclasses.dataclass
class DecodeBatch:
    sequences: list[Sequence]


class Scheduler:
    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self.free_slots = collections.deque(range(num_slots))
        self.waiting: collections.deque[list[Sequence]] = collections.deque()
        self.running: list[Sequence] = []

    def add(self, group: list[Sequence]) -> None:
        self.waiting.append(group)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> PrefillBatch | DecodeBatch | None:
        """Prefill whatever can be admitted now; otherwise decode the running sequences; None when idle."""
        admitted = []
        while self.waiting and self.free_slots:
            group = self.waiting[0]
            if len(group) > len(self.free_slots):
                if len(group) <= self.num_slots or self.running or admitted:
                    break  # wait for slots: a split group would prefill its prompt twice
                group = self._split_front(len(self.free_slots))
            else:
                self.waiting.popleft()
            for seq in group:
                seq.slot = self.free_slots.popleft()
            admitted.append(group)
        if admitted:
            self.running.extend(seq for group in admitted for seq in group)
            return PrefillBatch(admitted)
        return DecodeBatch(list(self.running)) if self.running else None

    def _split_front(self, size: int) -> list[Sequence]:
        group = self.waiting[0]
        self.waiting[0] = group[size:]
        return group[:size]

    def release_finished(self) -> list[Sequence]:
        """Free the slots of finished sequences; returns them."""
        done = [seq for seq in self.running if seq.finished]
        for seq in done:
            self.free_slots.append(seq.slot)
            seq.slot = None
        self.running = [seq for seq in self.running if not seq.finished]
        return done
