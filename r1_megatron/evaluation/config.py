"""Configuration of `r1-megatron eval` (EvalRunConfig: one YAML recipe plus overrides, like every run) and of
evaluation inside training runs (TrainingEvalConfig, the `evaluation` section of the GRPO and SFT configs)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

from r1_megatron.models.source import DTYPES
from r1_megatron.rewards.runner import RewardConfig
from r1_megatron.rollout.block_manager import SCRATCH_BLOCKS
from r1_megatron.rollout.cache_config import CacheConfig
from r1_megatron.rollout.decode_graphs import GraphConfig
from r1_megatron.rollout.sampling_params import R1_MAX_NEW_TOKENS, SamplingParams
from r1_megatron.runtime import ParallelConfig


HELD_OUT = "held_out"  # TrainingEvalConfig.benchmark: the task's own held-out examples


def _positive_or_none(owner: str, **values) -> None:
    for name, value in values.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{owner}.{name} must be a positive integer or null, got {value!r}")


@dataclasses.dataclass(frozen=True)
class EvalSampling:
    """How samples are drawn. R1's protocol by default: temperature 0.6, top-p 0.95, each benchmark's own k
    (`k` overrides it for every benchmark), up to 32,768 new tokens (null: the caller's length, see
    `resolved`). greedy: temperature 0 and one sample per question (the k samples would all be the same), so
    pass@1 is greedy accuracy."""

    k: int | None = None
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int | None = R1_MAX_NEW_TOKENS
    greedy: bool = False

    def __post_init__(self):
        if self.k is not None and (not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1):
            raise ValueError(f"sampling.k must be an integer >= 1 (or null: each benchmark's own k), got {self.k!r}")
        try:
            self.resolved(self.max_new_tokens or 1).params(1, 0)
        except ValueError as e:
            raise ValueError(f"sampling: {e}".replace("SamplingParams.", "sampling.")) from None

    def resolved(self, max_new_tokens: int) -> "EvalSampling":
        """These settings with max_new_tokens set (to `max_new_tokens` where it is null)."""
        return self if self.max_new_tokens is not None else dataclasses.replace(self, max_new_tokens=max_new_tokens)

    def samples_for(self, benchmark_k: int) -> int:
        return 1 if self.greedy else (self.k or benchmark_k)

    def params(self, n: int, seed: int) -> SamplingParams:
        temperature = 0.0 if self.greedy else self.temperature
        return SamplingParams(n=n, temperature=temperature, top_p=self.top_p, top_k=self.top_k,
                              max_new_tokens=self.max_new_tokens, seed=seed)


@dataclasses.dataclass
class EvalModelConfig:
    """What is evaluated: an HF directory (`path`), or a training checkpoint (`checkpoint`: a run directory, a
    checkpoint root or one checkpoint; loaded at the layout of `parallel`, whatever layout saved it). tokenizer:
    a directory (default: the HF directory's, or the one the checkpoint records). dtype: of an HF model (a
    checkpoint keeps its own)."""

    path: str | None = None
    checkpoint: str | None = None
    tokenizer: str | None = None
    dtype: str = "bf16"

    def __post_init__(self):
        if self.path is not None and self.checkpoint is not None:
            raise ValueError(f"model: set one of model.path (--model) and model.checkpoint (--ckpt), got both: "
                             f"{self.path!r}, {self.checkpoint!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {', '.join(map(repr, DTYPES))}, got {self.dtype!r}")


@dataclasses.dataclass
class BenchmarksConfig:
    """file: the benchmark definitions (null: the shipped r1_megatron/evaluation/benchmarks.yaml); names: which of
    them to run (empty: all); limit: only the first questions of each (a quick check)."""

    file: str | None = None
    names: list[str] = dataclasses.field(default_factory=list)
    limit: int | None = None

    def __post_init__(self):
        _positive_or_none("benchmarks", limit=self.limit)


@dataclasses.dataclass
class EvalEngineConfig:
    """The generation engine (docs/generation.md): sequences decoded together per rank, the paged KV cache,
    CUDA-graph decode; questions_per_round: questions generated between two writes of samples.jsonl, over all
    ranks (null: two full batches per data-parallel rank). The cache holds, unless cache.num_blocks or
    cache.memory_fraction says otherwise, max_batch_size sequences of up to TYPICAL_SEQ_LEN tokens and one of the
    full length (see cache_for)."""

    TYPICAL_SEQ_LEN: ClassVar[int] = 8192

    max_batch_size: int = 64
    questions_per_round: int | None = None
    cache: CacheConfig = dataclasses.field(default_factory=CacheConfig)
    graphs: GraphConfig = dataclasses.field(default_factory=GraphConfig)

    def __post_init__(self):
        _positive_or_none("engine", max_batch_size=self.max_batch_size, questions_per_round=self.questions_per_round)

    def cache_for(self, max_seq_len: int) -> CacheConfig:
        """The cache for sequences of up to max_seq_len tokens. R1's 32,768-token limit would reserve
        max_batch_size full-length sequences (tens of GB for a 7B model, allocated up front) while most
        responses are far shorter; so by default the pool holds max_batch_size - 1 sequences of up to
        TYPICAL_SEQ_LEN tokens plus one of max_seq_len, and longer responses preempt and are recomputed
        (docs/generation.md) instead of failing."""
        cache = self.cache
        if cache.num_blocks is not None or cache.memory_fraction is not None:
            return cache
        full, typical = (-(-n // cache.block_size) for n in (max_seq_len, min(max_seq_len, self.TYPICAL_SEQ_LEN)))
        return dataclasses.replace(cache, num_blocks=(self.max_batch_size - 1) * typical + full + SCRATCH_BLOCKS)


@dataclasses.dataclass
class EvalRewardsConfig:
    """The scoring processes (rewards/runner.py): a sample whose scoring runs past timeout_s, or whose worker
    dies, is scored wrong and counted in the benchmark's failures."""

    num_workers: int = 2
    timeout_s: float = 10.0  # CPU seconds of one sample's scoring
    wall_timeout_s: float | None = None  # wall backstop (null: 3 × timeout_s); reaching it first means one retry
    worker_memory_bytes: int = 4 << 30
    startup_timeout_s: float = 120.0
    chunk_size: int = 16
    plugin_modules: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        try:
            self.runner_config()
        except (ValueError, ImportError) as e:
            raise ValueError(f"rewards: {e}".replace("RewardConfig.", "rewards.")) from None

    def runner_config(self) -> RewardConfig:
        """The runner's settings; each benchmark sets the rewards it needs (Evaluator)."""
        return RewardConfig(weights={"format": 1.0}, num_workers=self.num_workers, timeout_s=self.timeout_s,
                            wall_timeout_s=self.wall_timeout_s, worker_memory_bytes=self.worker_memory_bytes,
                            startup_timeout_s=self.startup_timeout_s, chunk_size=self.chunk_size,
                            plugin_modules=tuple(self.plugin_modules))


@dataclasses.dataclass
class EvalRunConfig:
    """`r1-megatron eval`: out (results.json, samples.jsonl), seed (of every question's samples), the model, the
    layout, the benchmarks, R1's sampling protocol, the engine and the scoring processes."""

    DEFAULT_RECIPE: ClassVar[Path] = Path(__file__).resolve().parent / "recipes" / "r1_eval.yaml"

    out: str = "eval"
    seed: int = 0
    model: EvalModelConfig = dataclasses.field(default_factory=EvalModelConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    benchmarks: BenchmarksConfig = dataclasses.field(default_factory=BenchmarksConfig)
    sampling: EvalSampling = dataclasses.field(default_factory=EvalSampling)
    engine: EvalEngineConfig = dataclasses.field(default_factory=EvalEngineConfig)
    rewards: EvalRewardsConfig = dataclasses.field(default_factory=EvalRewardsConfig)
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class TrainingEvalSampling(EvalSampling):
    """EvalSampling for evaluation inside training: k samples per question (16: a small part of a step), and
    max_new_tokens null by default: the run's own generation length."""

    k: int = 16
    max_new_tokens: int | None = None


@dataclasses.dataclass
class TrainingEvalConfig:
    """Evaluation inside a training run, every `every_steps` steps (0: never), before the first step (`at_start`)
    and after the last; pass@1, pass@K and cons@K go into metrics.jsonl as eval/pass@1, ... (R1's Figure 1 plots
    pass@1 and cons@16 of R1-Zero over its steps). benchmark: `held_out` (the task's held-out examples: the
    built-in tasks have them) or a benchmark's name in `benchmarks_file` (null: the shipped benchmarks.yaml);
    limit: its first questions only. Samples follow `sampling` (R1's protocol; k samples per question, k = 16 by
    default here to keep evaluation a small part of a step), up to `sampling.max_new_tokens` (null: the
    command's own generation length), scored by `rewards`' processes; every sample goes to
    RUN_DIR/eval/step_N.jsonl."""

    every_steps: int = 0
    at_start: bool = True
    benchmark: str = HELD_OUT
    benchmarks_file: str | None = None
    limit: int | None = None
    sampling: TrainingEvalSampling = dataclasses.field(default_factory=TrainingEvalSampling)
    rewards: EvalRewardsConfig = dataclasses.field(default_factory=EvalRewardsConfig)
    max_batch_size: int = 64  # SFT runs: sequences decoded together (GRPO evaluates on its rollout engine)

    def __post_init__(self):
        if not isinstance(self.every_steps, int) or self.every_steps < 0:
            raise ValueError(f"evaluation.every_steps must be an integer >= 0 (0: never), got {self.every_steps!r}")
        _positive_or_none("evaluation", limit=self.limit, max_batch_size=self.max_batch_size)
        if self.sampling.k is None:
            raise ValueError("evaluation.sampling.k must be set (the samples per question of the periodic evaluation)")

    @property
    def enabled(self) -> bool:
        return self.every_steps > 0
