"""Configuration of `r1-megatron sample` (SampleRunConfig: one YAML recipe plus key=value overrides, like every
command). The model, engine, prompt data and rewards sections are the ones `eval` and `train grpo` read."""
from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import ClassVar

from r1_megatron.evaluation.config import EvalEngineConfig, EvalModelConfig
from r1_megatron.grpo.config import DataConfig, RewardsConfig
from r1_megatron.kernels.options import parse_enum
from r1_megatron.rewards.language_reward import LANGUAGE_SCRIPTS
from r1_megatron.rollout.sampling_params import R1_MAX_NEW_TOKENS, SamplingParams
from r1_megatron.runtime import ParallelConfig


class CodeBlocks(str, enum.Enum):
    REJECT = "reject"  # a code fence in the reasoning rejects the sample (R1)
    KEEP = "keep"


class Dedup(str, enum.Enum):
    EXACT = "exact"
    NORMALISED = "normalised"  # readability.normalise_text: case, punctuation and whitespace variants are one
    NONE = "none"


def _positive_or_none(key: str, value) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{key} must be a positive integer or null, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SampleSampling:
    """k samples per prompt. R1 gives no rejection-sampling temperature: the defaults are its evaluation protocol
    (temperature 0.6, top-p 0.95, up to 32,768 new tokens); k = 4 is ours (R1 gives no k either)."""

    k: int = 4
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = R1_MAX_NEW_TOKENS

    def __post_init__(self):
        _positive_or_none("sampling.k", self.k)
        try:
            self.params(0)
        except ValueError as e:
            raise ValueError(str(e).replace("SamplingParams.", "sampling.")) from None

    def params(self, seed: int) -> SamplingParams:
        return SamplingParams(n=self.k, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              max_new_tokens=self.max_new_tokens, seed=seed)


@dataclasses.dataclass
class KeepConfig:
    """Which samples pass the reward test: every reward named in `require` scores at least its minimum (R1 keeps
    the correct responses: math_accuracy 1.0; add `format: 1.0` or `think_format: 1.0` to require the format too;
    empty: every sample passes). max_per_prompt: keep at most this many of a prompt's samples, the first that
    pass every filter (null: all of them)."""

    require: dict[str, float] = dataclasses.field(default_factory=lambda: {"math_accuracy": 1.0})
    max_per_prompt: int | None = None

    def __post_init__(self):
        _positive_or_none("keep.max_per_prompt", self.max_per_prompt)


@dataclasses.dataclass
class LanguageFilter:
    """Mixed languages: reject a reasoning whose share of words in `target`'s scripts is below min_consistency
    (null: off). R1 gives no threshold; 0.95 is ours (about one foreign word in twenty)."""

    target: str = "en"
    min_consistency: float | None = 0.95


@dataclasses.dataclass
class FiltersConfig:
    """R1's readability filters on the reasoning part (readability.py), then de-duplication. max_paragraph_chars:
    reject a reasoning with a paragraph longer than this (null: off; R1 gives no length, 1,000 is ours)."""

    language: LanguageFilter = dataclasses.field(default_factory=LanguageFilter)
    max_paragraph_chars: int | None = 1000
    code_blocks: CodeBlocks = CodeBlocks.REJECT
    dedup: Dedup = Dedup.NORMALISED

    def __post_init__(self):
        if isinstance(self.language, dict):
            self.language = LanguageFilter(**self.language)
        threshold = self.language.min_consistency
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                      or not 0.0 <= threshold <= 1.0):
            raise ValueError(f"filters.language.min_consistency must be in [0, 1] or null (off), got {threshold!r}")
        if self.language.target not in LANGUAGE_SCRIPTS:
            raise ValueError(f"filters.language.target must be one of {', '.join(sorted(LANGUAGE_SCRIPTS))}, got "
                             f"{self.language.target!r}")
        _positive_or_none("filters.max_paragraph_chars", self.max_paragraph_chars)
        self.code_blocks = parse_enum(CodeBlocks, self.code_blocks, "filters.code_blocks")
        self.dedup = parse_enum(Dedup, self.dedup, "filters.dedup")


def _sample_rewards() -> RewardsConfig:
    # correctness only: the R1-Zero template's format reward fails a chat model's responses (no <answer> tags);
    # no reward is reported as accuracy or format rate (keep.require says what counts)
    return RewardsConfig(weights={"math_accuracy": 1.0}, accuracy=None, format=None)


@dataclasses.dataclass
class SampleRunConfig:
    """`r1-megatron sample`: out (OUT/samples.jsonl, the SFT-ready kept samples; OUT/summary.json, the filter
    table), seed (each prompt's k samples are a function of (seed, prompt index) only), the model, the layout,
    the prompts (`data`, as `train grpo` reads them), the sampling, which samples are kept (`keep`, `filters`),
    the rewards that score them, the engine, `limit` (the first prompts only) and the progress bar."""

    DEFAULT_RECIPE: ClassVar[Path] = Path(__file__).resolve().parent / "recipes" / "r1_sample.yaml"

    out: str = "samples"
    seed: int = 0
    model: EvalModelConfig = dataclasses.field(default_factory=EvalModelConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    data: DataConfig | None = None
    sampling: SampleSampling = dataclasses.field(default_factory=SampleSampling)
    keep: KeepConfig = dataclasses.field(default_factory=KeepConfig)
    filters: FiltersConfig = dataclasses.field(default_factory=FiltersConfig)
    rewards: RewardsConfig = dataclasses.field(default_factory=_sample_rewards)
    engine: EvalEngineConfig = dataclasses.field(default_factory=EvalEngineConfig)
    limit: int | None = None
    progress: bool = True

    def __post_init__(self):
        _positive_or_none("limit", self.limit)
        for name in self.keep.require:
            if name not in self.rewards.weights:
                raise ValueError(f"keep.require names {name!r}, which rewards.weights does not compute (it has "
                                 f"{', '.join(self.rewards.weights) or 'nothing'}); add it there (weight 0 is fine)")
        if self.data is not None:
            self._check_data(self.data)

    def _check_data(self, data: DataConfig) -> None:
        """The tokenizer is the model's; every reward gets the record fields it reads (as `train grpo` checks)."""
        from r1_megatron.rewards.registry import reward_names, reward_needs

        if data.tokenizer is not None:
            raise ValueError("data.tokenizer: sample encodes prompts with the model's tokenizer; set model.tokenizer")
        for name in self.rewards.weights:
            for field in reward_needs(name) if name in reward_names() else ():
                missing = data.missing_field(field)
                if missing is not None:
                    raise ValueError(f"rewards.weights has {name}, which reads each record's {field}: {missing}")
