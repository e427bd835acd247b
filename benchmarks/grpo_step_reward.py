"""bench_grpo_step.py's reward for r1_megatron's side, as a reward plugin (`rewards.plugin_modules`): the reward
workers import this module, which registers the same `digit_count` that TRL's side calls in-process."""
from bench_grpo_step import digit_count

from r1_megatron.rewards.registry import register_reward


@register_reward("bench_digit_count")
def bench_digit_count(completion: str, sample, **kwargs) -> float:
    return digit_count(completion)
