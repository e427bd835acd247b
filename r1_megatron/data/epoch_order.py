"""Indices 0..n-1 served epoch after epoch, each epoch in a permutation seeded by `"{seed}:{epoch}"` (file order
without shuffling): the resumable order the prompt datasets, the SFT datasets and the warm start draw from."""
from __future__ import annotations

import random


class EpochOrder:
    def __init__(self, n: int, seed: object, shuffle: bool = True):
        """seed: any value whose str() names the stream (an int, or e.g. "warm-start:0")."""
        if n < 1:
            raise ValueError(f"EpochOrder needs at least one index, got n={n}")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.load(0, 0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        """The next `k` indices; a batch that ends an epoch continues into the next (a new permutation)."""
        out = []
        while len(out) < k:
            if self.position == self.n:
                self.load(self.epoch + 1, 0)
            out.append(self._order[self.position])
            self.position += 1
        return out

    def load(self, epoch: int, position: int) -> None:
        """Continue at `position` of epoch `epoch` (what state_dicts record)."""
        self.epoch, self.position = int(epoch), int(position)
        self._order = self._permutation(self.epoch)

    @property
    def progress(self) -> float:
        """Epochs served so far, fractional (1.5: one epoch and half of the next)."""
        return self.epoch + self.position / self.n
