"""A reward that attacks its worker on purpose, registered for tests/adversarial/test_math_and_runner.py
(imported by the workers as a plugin)."""
import time

from r1_megatron.rewards import register_reward

BURN_S = 0.6  # CPU seconds a BURN sample computes: under the tests' 1 s CPU limit, over it in wall time loaded


@register_reward("test_bomb")
def bomb(completion, sample, **kwargs):
    """ALLOC asks for 10 GiB at once, GROW fills memory 32 MiB at a time until it has no more, BURN computes for
    BURN_S of CPU time and scores 1.0; anything else scores 0.0."""
    if "ALLOC" in completion:
        bytearray(10 << 30)
    held = []
    while "GROW" in completion:
        held.append(b"x" * (32 << 20))  # written, so resident, not just reserved
    if "BURN" in completion:
        until = time.thread_time() + BURN_S
        while time.thread_time() < until:
            pass
        return 1.0
    return 0.0
