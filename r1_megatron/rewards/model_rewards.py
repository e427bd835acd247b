"""Model rewards beside the rule rewards, in one weighted sum: a preference reward model (an HF
``*ForSequenceClassification`` checkpoint) and a generative judge (rewards/judge.py), loaded on the caller's own
ranks at the current parallel layout.

    scorer = build_reward_scorer(rewards_cfg, runner, tokenizer=tokenizer)   # runner: the rule rewards' pool
    batch = scorer.score(texts, samples)      # a RewardBatch: rule and model components, total, failures

total_i = Σ_r weight_r · score_r,i over the rewards r that apply to sample i's kind (``rewards.kinds``: kind ->
reward names; empty: every reward applies to every sample). A reward that does not apply is not computed: its
value is 0.0 and it counts in no mean (``RewardBatch.applies``). Collective: every rank calls ``score`` in the
same order (the models run over the model-parallel group; data-parallel ranks pass their own samples).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from .answer_extraction import answer_after_think
from .registry import APPLIES_FIELD, DEFAULT_KIND, get_model_reward, get_reward, model_reward_kinds
from .runner import RewardBatch

TARGETS = ("summary", "response")
DTYPES = ("fp32", "bf16")
DEFAULT_JUDGE_PROMPT = (
    "You are grading a response against a reference answer.\n\n"
    "Question:\n{question}\n\nReference answer:\n{reference}\n\nResponse:\n{response}\n\n"
    "Does the response reach the same final answer as the reference? "
    "Reply with [[YES]] or [[NO]] only.")


@dataclasses.dataclass
class ModelRewardConfig:
    """One model reward (``rewards.models.NAME``). kind: preference | judge; path: its HF directory; target: what
    it reads of a completion, ``summary`` (the text after the last ``</think>``: helpfulness) or ``response``
    (all of it: safety); dtype fp32 | bf16; batch_size: sequences per forward (preference) or decoded together
    (judge). Judge only: ``prompt`` with ``{question}``, ``{reference}``, ``{response}``; ``max_new_tokens`` of
    its greedy verdict; ``max_prompt_tokens``: a longer judge prompt is not judged (scores 0, counted unparsed)."""

    kind: str = "preference"
    path: str = ""
    target: str = "summary"
    dtype: str = "bf16"
    batch_size: int = 8
    prompt: str = DEFAULT_JUDGE_PROMPT
    max_new_tokens: int = 64
    max_prompt_tokens: int = 2048

    def check(self, name: str) -> None:
        """ValueError naming ``rewards.models.NAME.KEY`` for the first bad field."""
        key = f"rewards.models.{name}"
        if self.kind not in model_reward_kinds():
            raise ValueError(f"{key}.kind must be one of {model_reward_kinds()}, got {self.kind!r}")
        # the directory, not its files: a pipeline checks its recipe before an earlier stage has written the
        # model (a stand-in directory), and loading names a missing config.json anyway
        if not self.path or not Path(self.path).is_dir():
            raise ValueError(f"{key}.path={self.path!r}: no such directory (an HF model directory)")
        for field, allowed in (("target", TARGETS), ("dtype", DTYPES)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"{key}.{field} must be one of {allowed}, got {getattr(self, field)!r}")
        for field in ("batch_size", "max_new_tokens", "max_prompt_tokens"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key}.{field} must be a positive integer, got {value!r}")
        try:
            self.prompt.format(question="", reference="", response="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"{key}.prompt: may only use {{question}}, {{reference}}, {{response}} "
                             f"({type(e).__name__}: {e})") from None


def check_model_rewards(models: Mapping[str, ModelRewardConfig], weights: Mapping[str, float],
                        kinds: Mapping[str, Sequence[str]]) -> None:
    """The cross-checks of ``rewards.models``, ``weights`` and ``kinds`` (ValueError naming the key)."""
    for name, cfg in models.items():
        try:
            get_reward(name)
        except ValueError:
            pass
        else:
            raise ValueError(f"rewards.models.{name}: the name is a registered rule reward; choose another")
        cfg.check(name)
        if name not in weights:
            raise ValueError(f"rewards.models.{name} has no weight: add it to rewards.weights")
        if not math.isfinite(weights[name]):
            raise ValueError(f"rewards.weights.{name} must be finite, got {weights[name]!r}")
    for kind, names in kinds.items():
        unknown = [n for n in names if n not in weights]
        if unknown:
            raise ValueError(f"rewards.kinds.{kind} names {unknown}, which are not in rewards.weights "
                             f"({', '.join(weights)})")


def reward_target(text: str, target: str) -> str:
    """What a model reward reads of a completion: ``summary`` = the text after the last ``</think>`` (all of it
    when there is none), stripped; ``response`` = the whole completion."""
    return text if target == "response" else (answer_after_think(text) or "")


def conversation_text(tokenizer, question: str, answer: str) -> str:
    """[user: question, assistant: answer] in the tokenizer's chat template; ``question + "\\n" + answer`` when
    it has none."""
    if tokenizer.chat_template is None:
        return f"{question}\n{answer}"
    return tokenizer.apply_chat_template([{"role": "user", "content": question},
                                          {"role": "assistant", "content": answer}], add_generation_prompt=False)


class PreferenceReward:
    """A preference reward model's scalar score of [user: question, assistant: target text], encoded with the RM's
    own tokenizer (models/reward_model.py reads the score at the last token, as transformers pools)."""

    counts: dict[str, float] = {}

    def __init__(self, name: str, cfg: ModelRewardConfig, *, tokenizer=None):
        import torch

        from r1_megatron.models.reward_model import load_reward_model
        from r1_megatron.tokenizer import load_tokenizer

        self.name, self.cfg = name, cfg
        self.model = load_reward_model(cfg.path, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.dtype])
        self.tokenizer = load_tokenizer(self.model.tokenizer_dir)

    def token_ids(self, texts: Sequence[str], samples: Sequence[Mapping[str, Any]]) -> list[list[int]]:
        # a template carries its own BOS; the plain fallback gets the tokenizer's, as transformers' encode does
        specials = self.tokenizer.chat_template is None
        return [self.tokenizer.encode(conversation_text(self.tokenizer, s.get("question") or "",
                                                        reward_target(t, self.cfg.target)),
                                      add_special_tokens=specials) for t, s in zip(texts, samples)]

    def score(self, texts: Sequence[str], samples: Sequence[Mapping[str, Any]]) -> list[float]:
        return [float(v) for v in self.model.score(self.token_ids(texts, samples), batch_size=self.cfg.batch_size)]

    def close(self) -> None:
        self.model = None


class RewardScorer:
    """The rule rewards' runner and the model rewards behind one ``score(texts, samples) -> RewardBatch``."""

    def __init__(self, weights: Mapping[str, float], kinds: Mapping[str, Sequence[str]], runner,
                 models: Mapping[str, Any]):
        self.weights, self.kinds, self.runner, self.models = dict(weights), dict(kinds), runner, dict(models)
        self.rule_names = [n for n in self.weights if n not in self.models]

    def __enter__(self) -> "RewardScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
        for model in self.models.values():
            model.close()

    def applies(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, list[bool]]:
        """reward -> whether it scores each sample (its kind's list in rewards.kinds; all when kinds is empty)."""
        if not self.kinds:
            return {n: [True] * len(samples) for n in self.weights}
        of_kind = []
        for s in samples:
            kind = s.get("kind") or DEFAULT_KIND
            if kind not in self.kinds:
                raise ValueError(f"rewards.kinds has no entry for kind {kind!r} (kinds: {', '.join(self.kinds)})")
            of_kind.append(set(self.kinds[kind]))
        return {n: [n in names for names in of_kind] for n in self.weights}

    def score(self, texts: Sequence[str], samples: Sequence[Mapping[str, Any]]) -> RewardBatch:
        if len(texts) != len(samples):
            raise ValueError(f"score: {len(texts)} completions but {len(samples)} samples")
        start = time.monotonic()
        n, applies = len(texts), self.applies(samples)
        per_reward = {name: [0.0] * n for name in self.weights}
        batch = RewardBatch(total=[0.0] * n, per_reward=per_reward, failure=[None] * n, wall_s=0.0,
                            errors=[None] * n, applies=applies)
        if self.runner is not None:
            self._score_rules(texts, samples, batch)
        for name, model in self.models.items():
            chosen = [i for i in range(n) if applies[name][i]]
            # called with an empty list too: a judge's engine steps in lockstep with its expert-parallel peers
            values = model.score([texts[i] for i in chosen], [samples[i] for i in chosen])
            for i, value in zip(chosen, values):
                per_reward[name][i] = float(value)
            batch.counts.update({f"{name}_{k}": v for k, v in model.counts.items()})
        batch.total = [sum(w * per_reward[r][i] for r, w in self.weights.items() if applies[r][i])
                       for i in range(n)]
        batch.wall_s = time.monotonic() - start
        return batch

    def _score_rules(self, texts, samples, batch: RewardBatch) -> None:
        """The rule rewards of the samples whose kind has any, each sample told which apply (reward_worker.py)."""
        chosen = [i for i in range(len(texts)) if any(batch.applies[r][i] for r in self.rule_names)]
        marked = [{**samples[i], APPLIES_FIELD: [r for r in self.rule_names if batch.applies[r][i]]} for i in chosen]
        rules = self.runner.score([texts[i] for i in chosen], marked)
        for j, i in enumerate(chosen):
            for r in self.rule_names:
                batch.per_reward[r][i] = rules.per_reward[r][j]
            batch.failure[i] = rules.failure[j]
            batch.errors[i] = rules.errors[j] if rules.errors else None
        batch.retries = rules.retries


def build_reward_scorer(rewards_cfg, runner, *, tokenizer=None):
    """The scorer of ``rewards_cfg`` (grpo.config.RewardsConfig): ``runner`` (a RewardRunner of its rule rewards,
    None when it has none) alone when there are no model rewards and no kinds, else a RewardScorer that loads each
    ``rewards.models`` entry on the caller's ranks (collective) and owns ``runner`` (closes it)."""
    models, kinds = dict(getattr(rewards_cfg, "models", {})), dict(getattr(rewards_cfg, "kinds", {}))
    if not models and not kinds:
        return runner
    loaded = {name: get_model_reward(cfg.kind)(name, cfg, tokenizer=tokenizer) for name, cfg in models.items()}
    return RewardScorer(rewards_cfg.weights, kinds, runner, loaded)
