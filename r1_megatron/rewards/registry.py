"""Rewards by name. Every entry has the signature ``fn(completion, sample, **kwargs) -> float``.

``completion`` is the decoded text without the EOS/stop token that ended it. ``sample`` is the prompt's reference
data, a mapping with the keys ``SAMPLE_FIELDS`` (``answer``: the final answer, ``tests``: code test cases; None
where the dataset has no such field), plus, from the trainer, the completion's ``finish_reason`` ("stop": it ended
with its EOS, "length": cut off at max_new_tokens); ``kwargs`` come from
``RewardConfig.reward_kwargs[name]``. Entries are callables, or ``"module:function"`` strings imported on first
use (so a reward living outside this package costs nothing until used).
Third-party rewards: call ``register_reward`` in a module and list that module in
``RewardConfig.plugin_modules`` so worker processes import it too.

A reward declares the sample fields it reads (``needs``), so a run config that feeds it data without them is
refused when it is loaded, and optionally a ``check(sample)`` that raises ValueError when a sample's reference
data cannot be scored at all (a run checks a bounded sample of its prompts with it at start-up and warns).

Model rewards (a preference reward model, a generative judge) are registered here too, by kind, with
``register_model_reward(kind, factory)``: ``factory(name, config, tokenizer=...)`` loads the model on the caller's
ranks and returns an object with ``score(texts, samples) -> list[float]`` (rewards/model_rewards.py). A run names
one in ``rewards.models`` and weighs it in ``rewards.weights`` like a rule reward.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Sequence

from .choice_reward import choice_reference, multiple_choice
from .code_reward import code_tests, parse_test_cases
from .exact_reward import exact_answer, exact_reference
from .language_reward import language_consistency
from .math_reward import check_reference, math_accuracy
from .template_format import format_reward, think_format

RewardFn = Callable[..., float]
RewardCheck = Callable[[Mapping[str, Any]], None]
SAMPLE_FIELDS = ("answer", "tests")  # what every reward's `sample` holds (data's PromptSample.reward_sample)
# optional sample key: the names of the rewards that apply to it (rewards.kinds); the others score 0.0 unrun
APPLIES_FIELD = "applies"
DEFAULT_KIND = "default"  # a prompt's kind when its data names none (data.kind_field null)


def _math_accuracy(completion: str, sample: Mapping[str, Any], **kwargs) -> float:
    return math_accuracy(completion, sample["answer"], **kwargs)


def _format(completion: str, sample: Mapping[str, Any], **kwargs) -> float:
    return format_reward(completion, **kwargs)


def _language_consistency(completion: str, sample: Mapping[str, Any], **kwargs) -> float:
    return language_consistency(completion, **kwargs)


def _code_tests(completion: str, sample: Mapping[str, Any], **kwargs) -> float:
    return code_tests(completion, sample["tests"], **kwargs)


def _multiple_choice(completion: str, sample: Mapping[str, Any], **kwargs) -> float:
    return multiple_choice(completion, sample["answer"], **kwargs)


def _exact_answer(completion: str, sample: Mapping[str, Any], **kwargs) -> float:
    return exact_answer(completion, sample["answer"], **kwargs)


def _think_format(completion: str, sample: Mapping[str, Any], **kwargs) -> float:
    return think_format(completion, **kwargs)


def _check_choice_reference(sample: Mapping[str, Any]) -> None:
    choice_reference(sample["answer"])


def _check_exact_reference(sample: Mapping[str, Any]) -> None:
    exact_reference(sample["answer"])


def _check_math_reference(sample: Mapping[str, Any]) -> None:
    check_reference(sample["answer"])


def _check_code_tests(sample: Mapping[str, Any]) -> None:
    parse_test_cases(sample["tests"])


_REGISTRY: dict[str, RewardFn | str] = {
    "math_accuracy": _math_accuracy,
    "format": _format,
    "language_consistency": _language_consistency,
    "code_tests": _code_tests,
    "arithmetic_exact": "r1_megatron.data.synthetic:arithmetic_reward_for_sample",
    "multiple_choice": _multiple_choice,
    "exact_answer": _exact_answer,
    "think_format": _think_format,
}
_NEEDS: dict[str, tuple[str, ...]] = {"math_accuracy": ("answer",), "code_tests": ("tests",),
                                      "arithmetic_exact": ("answer",), "multiple_choice": ("answer",),
                                      "exact_answer": ("answer",)}
_CHECKS: dict[str, RewardCheck] = {"math_accuracy": _check_math_reference, "code_tests": _check_code_tests,
                                   "multiple_choice": _check_choice_reference, "exact_answer": _check_exact_reference}


_MODEL_REWARDS: dict[str, Callable[..., Any] | str] = {
    "preference": "r1_megatron.rewards.model_rewards:PreferenceReward",
    "judge": "r1_megatron.rewards.judge:GenerativeJudge",
}


def register_model_reward(kind: str, factory: Callable[..., Any]) -> None:
    """Add a model reward kind: ``factory(name, config, *, tokenizer)`` -> an object with
    ``score(texts, samples) -> list[float]`` and ``close()`` (kinds are unique)."""
    if kind in _MODEL_REWARDS and _MODEL_REWARDS[kind] is not factory:
        raise ValueError(f"model reward kind {kind!r} is already registered")
    _MODEL_REWARDS[kind] = factory


def model_reward_kinds() -> list[str]:
    return sorted(_MODEL_REWARDS)


def get_model_reward(kind: str) -> Callable[..., Any]:
    """The factory registered for model reward ``kind``; ValueError naming the known kinds otherwise."""
    if kind not in _MODEL_REWARDS:
        raise ValueError(f"unknown model reward kind {kind!r}; registered: {model_reward_kinds()}")
    return _resolved(_MODEL_REWARDS, kind)


def register_reward(name: str, *, needs: Sequence[str] = (), check: RewardCheck | None = None
                    ) -> Callable[[RewardFn], RewardFn]:
    """Decorator adding ``fn(completion, sample, **kwargs) -> float`` under ``name`` (names are unique).

    ``needs``: the sample fields ``fn`` reads (of ``SAMPLE_FIELDS``). ``check``: ``check(sample)`` raises
    ValueError saying why a sample's reference data cannot be scored (see the module docstring).
    """
    unknown = [f for f in needs if f not in SAMPLE_FIELDS]
    if unknown or isinstance(needs, str):
        raise ValueError(f"register_reward({name!r}): needs={needs!r} must list sample fields of {SAMPLE_FIELDS}")

    def add(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered")
        _REGISTRY[name] = fn
        _NEEDS[name] = tuple(needs)
        if check is not None:
            _CHECKS[name] = check
        return fn

    return add


def reward_needs(name: str) -> tuple[str, ...]:
    """The sample fields the reward ``name`` reads (as registered)."""
    get_reward(name)
    return _NEEDS.get(name, ())


def reward_check(name: str) -> RewardCheck | None:
    """The reward's reference-data check, None when it registered none."""
    get_reward(name)
    return _CHECKS.get(name)


def reward_names() -> list[str]:
    return sorted(_REGISTRY)


def get_reward(name: str) -> RewardFn:
    """The reward registered as ``name``; ValueError naming the known rewards otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown reward {name!r}; registered: {reward_names()}")
    return _resolved(_REGISTRY, name)


def _resolved(table: dict, name: str):
    """table[name], a "module:function" string imported on first use (and kept imported)."""
    entry = table[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = table[name] = getattr(importlib.import_module(module), attr)
    return entry
