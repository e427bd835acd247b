"""Rewards by name. Every entry has the signature ``fn(completion, sample, **kwargs) -> float``.

``sample`` is the prompt record (a mapping with at least the fields the reward reads, e.g. ``answer``);
``kwargs`` come from ``RewardConfig.reward_kwargs[name]``. Entries are callables, or ``"module:function"``
strings imported on first use (so a reward living outside this package costs nothing until used).
Third-party rewards: call ``register_reward`` in a module and list that module in
``RewardConfig.plugin_modules`` so worker processes import it too.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from .code_reward import code_tests
from .language_reward import language_consistency
from .math_reward import math_accuracy
from .template_format import format_reward

RewardFn = Callable[..., float]


def _math_accuracy(completion: str, sample: Mapping[str, Any], **kwargs) -> float:
    return math_accuracy(completion, sample["answer"], **kwargs)


def _format(completion: str, sample: Mapping[str, Any], **kwargs) -> float:
    return format_reward(completion, **kwargs)


def _language_consistency(completion: str, sample: Mapping[str, Any], **kwargs) -> float:
    return language_consistency(completion, **kwargs)


def _code_tests(completion: str, sample: Mapping[str, Any], **kwargs) -> float:
    return code_tests(completion, sample["tests"], **kwargs)


_REGISTRY: dict[str, RewardFn | str] = {
    "math_accuracy": _math_accuracy,
    "format": _format,
    "language_consistency": _language_consistency,
    "code_tests": _code_tests,
    "arithmetic_exact": "r1_megatron.data.synthetic:arithmetic_reward_for_sample",
}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator adding ``fn(completion, sample, **kwargs) -> float`` under ``name`` (names are unique)."""

    def add(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return add


def reward_names() -> list[str]:
    return sorted(_REGISTRY)


def get_reward(name: str) -> RewardFn:
    """The reward registered as ``name``; ValueError naming the known rewards otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown reward {name!r}; registered: {reward_names()}")
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = _REGISTRY[name] = getattr(importlib.import_module(module), attr)
    return entry
