"""Counters of one Engine.generate() call, or of the steps since `Engine.generating()` began when requests are
added one at a time (the engine keeps them as `engine.stats`)."""
from __future__ import annotations

import dataclasses

from .block_manager import BlockManager
from .scheduler import Scheduler, StepPlan


@dataclasses.dataclass
class GenerationStats:
    """What one generate() call (or a generating() session's steps) did: forwards, tokens computed (prefill chunks count every prompt token they
    compute, so a prompt shared by n samples counts once), preemptions, and the peaks of cache blocks in use
    and of sequences running together."""

    steps: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    preemptions: int = 0
    peak_blocks_used: int = 0
    peak_running: int = 0

    def record(self, plan: StepPlan, scheduler: Scheduler, blocks: BlockManager) -> None:
        self.steps += 1
        for chunk in plan.chunks:
            if chunk.start < len(chunk.seq.prompt_ids) or chunk.end - chunk.start > 1:
                self.prefill_tokens += chunk.end - chunk.start
            else:
                self.decode_tokens += 1
        self.peak_blocks_used = max(self.peak_blocks_used, blocks.num_blocks - 1 - blocks.num_free)
        self.peak_running = max(self.peak_running, len(scheduler.running))
        self.preemptions = scheduler.num_preemptions
