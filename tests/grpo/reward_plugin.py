"""A test reward that an untrained model earns about 1 time in 10: rewards in a group differ, so GRPO updates."""
from r1_megatron.rewards.registry import register_reward


@register_reward("starts_with_one")
def starts_with_one(completion: str, sample, **kwargs) -> float:
    return 1.0 if completion.startswith("1") else 0.0


@register_reward("always_raises")
def always_raises(completion: str, sample, **kwargs) -> float:
    """A broken reward: every sample of every step fails (the run must stop, not train on zeros)."""
    raise RuntimeError("reward bug")
