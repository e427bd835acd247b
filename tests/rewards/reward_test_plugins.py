"""Rewards that misbehave on purpose, registered for the runner tests (imported by the workers as a plugin)."""
import os
import time

from r1_megatron.rewards import register_reward


@register_reward("test_misbehave")
def misbehave(completion, sample, **kwargs):
    """HANG sleeps for an hour, SPIN computes forever, CRASH kills the worker, RAISE raises, SLOW takes 0.2 s;
    anything else scores len % 2. A sample with a "log" path first appends "<worker pid> <completion>" to that file."""
    if sample.get("log"):
        with open(sample["log"], "a") as f:
            f.write(f"{os.getpid()} {completion}\n")
    if "HANG" in completion:
        time.sleep(3600)
    while "SPIN" in completion:
        pass
    if "CRASH" in completion:
        os._exit(3)
    if "RAISE" in completion:
        raise RuntimeError("reward bug")
    if "SLOW" in completion:
        time.sleep(0.2)
    return float(len(completion) % 2)
