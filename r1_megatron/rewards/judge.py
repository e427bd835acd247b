"""A generative judge: a causal LM (e.g. the base model) asked through the engine whether a response agrees with
the reference answer, its verdict parsed to a score. For prompts with no verifiable answer (R1's rejection
sampling of non-reasoning data, where DeepSeek-V3 judges); weighed like any reward (rewards/model_rewards.py).

    rewards:
      weights: {agrees: 1.0}
      models: {agrees: {kind: judge, path: /models/base, dtype: bf16}}

The judge reads ``ModelRewardConfig.prompt`` filled with the question, the sample's reference answer and the
response's summary (or the whole response), rendered with the judge tokenizer's chat template when it has one,
and answers greedily; ``parse_verdict`` turns its text into a score. A verdict it cannot read scores 0.0 and is
counted (``reward/NAME_unparsed``).
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from .model_rewards import ModelRewardConfig, reward_target

_WORDS = {"yes": 1.0, "correct": 1.0, "true": 1.0, "no": 0.0, "incorrect": 0.0, "wrong": 0.0, "false": 0.0}
_WORD = "|".join(sorted(_WORDS, key=len, reverse=True))
_BRACKETED = re.compile(rf"\[\[\s*({_WORD}|[01](?:\.\d+)?|0?\.\d+)\s*\]\]", re.IGNORECASE)
_LABELLED = re.compile(rf"\b(?:verdict|answer|judgement|judgment)\s*[:=]\s*\**\s*({_WORD})\b", re.IGNORECASE)
_BARE = re.compile(rf"^\W*({_WORD})\W*$", re.IGNORECASE)


def parse_verdict(text: str) -> float | None:
    """The judge's score in [0, 1], read after its last ``</think>``: the last ``[[...]]`` holding yes/no (or
    correct/incorrect, true/false, wrong) or a number in [0, 1]; else the last ``Verdict: yes`` / ``Answer: no``
    (also judgement); else a reply that is only such a word. yes-like words are 1.0, no-like 0.0. None when
    there is none of these, or a bracketed number above 1."""
    if not isinstance(text, str):
        return None
    text = text.rpartition("</think>")[2]
    for pattern in (_BRACKETED, _LABELLED, _BARE):
        found = pattern.findall(text)
        if found:
            word = found[-1].lower()
            value = _WORDS[word] if word in _WORDS else float(word)
            return value if 0.0 <= value <= 1.0 else None
    return None


def judge_prompt(template: str, tokenizer, question: str, reference: str, response: str) -> str:
    """The judge's input: ``template`` filled in, as a user turn of the tokenizer's chat template (with the
    generation prompt) when it has one, else as is."""
    content = template.format(question=question, reference=reference, response=response)
    if tokenizer.chat_template is None:
        return content
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


class GenerativeJudge:
    """The judge model (``cfg.path``, an HF causal LM) loaded on this rank at the current layout, with an engine
    over it. ``score`` is collective: every model-parallel rank passes the same samples."""

    def __init__(self, name: str, cfg: ModelRewardConfig, *, tokenizer=None):
        import torch

        from r1_megatron.models import load_hf
        from r1_megatron.rollout import Engine
        from r1_megatron.tokenizer import load_tokenizer

        self.name, self.cfg = name, cfg
        self.tokenizer = load_tokenizer(cfg.path)
        model = load_hf(cfg.path, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.dtype])
        model.requires_grad_(False)
        self.engine = Engine(model, max_batch_size=cfg.batch_size,
                             max_seq_len=cfg.max_prompt_tokens + cfg.max_new_tokens + 1,
                             eos_token_ids=[self.tokenizer.eos_token_id])
        self.counts: dict[str, float] = {"unparsed": 0.0}
        self.verdicts: list[str | None] = []  # the judge's text of the last call (None: prompt too long)

    def prompt_ids(self, text: str, sample: Mapping[str, Any]) -> list[int]:
        prompt = judge_prompt(self.cfg.prompt, self.tokenizer, sample.get("question") or "",
                              str(sample.get("answer") or ""), reward_target(text, self.cfg.target))
        return self.tokenizer.encode(prompt)

    def score(self, texts: Sequence[str], samples: Sequence[Mapping[str, Any]]) -> list[float]:
        from r1_megatron.rollout import SamplingParams

        ids = [self.prompt_ids(t, s) for t, s in zip(texts, samples)]
        fits = [i for i, p in enumerate(ids) if len(p) <= self.cfg.max_prompt_tokens]
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=self.cfg.max_new_tokens)
        completions = self.engine.generate([ids[i] for i in fits], params)
        self.verdicts = [None] * len(texts)
        for i, c in zip(fits, completions):
            self.verdicts[i] = self.tokenizer.decode(c.content_ids, skip_special_tokens=True)
        scores = [parse_verdict(v) if v is not None else None for v in self.verdicts]
        self.counts = {"unparsed": float(sum(s is None for s in scores))}
        return [0.0 if s is None else s for s in scores]

    def close(self) -> None:
        self.engine = None
