"""The GRPO run's configuration: one typed dataclass per component, composed into `GRPORunConfig`.

A run is one YAML recipe (examples/*.yaml; the built-in default is r1_megatron/grpo/recipes/tiny_demo.yaml) plus
`key=value` overrides, loaded by r1_megatron/run_config.py; the sections every command shares are in
training/run_sections.py. Components validate their own fields with ValueErrors
naming the field; the cross-component checks are in GRPORunConfig.__post_init__.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from r1_megatron.data.answer_format import AnswerFormat
from r1_megatron.data.prompt_dataset import OnError
from r1_megatron.data.synthetic import ArithmeticConfig
from r1_megatron.evaluation.config import TrainingEvalConfig
from r1_megatron.kernels import AdvantageStd, GRPOLossConfig
from r1_megatron.kernels.options import parse_enum
from r1_megatron.models.source import ModelSourceConfig  # noqa: F401  (re-exported: the model section's type)
from r1_megatron.rewards.model_rewards import ModelRewardConfig, check_model_rewards
from r1_megatron.rollout.cache_config import CacheConfig
from r1_megatron.rollout.decode_graphs import GraphConfig
from r1_megatron.rollout.sampling_params import SamplingParams
from r1_megatron.training.run_sections import CheckpointConfig, LoggingConfig, RunConfig  # noqa: F401

from .loss_health import check_bands
from .router_rl import RouterRLConfig


def _positive(owner: str, **values) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


@dataclasses.dataclass
class DataConfig:
    """Prompts: JSONL/Parquet files (`paths`, with the field names), or the built-in synthetic addition task
    (`synthetic: arithmetic`). The tokenizer comes from `tokenizer` (a directory), else from model.path.
    answer_format: where the final answer is in the answer field (auto / gsm8k / boxed / raw, see
    data/answer_format.py); tests_field: the code tests' field (code_tests); kind_field: the field holding a
    prompt's kind (rewards.kinds picks the rewards of each kind; null: every prompt's kind is "default"); on_error:
    raise, or skip and count bad records. docs/data.md describes the format."""

    paths: list[str] = dataclasses.field(default_factory=list)
    synthetic: str | None = None
    arithmetic: ArithmeticConfig = dataclasses.field(default_factory=ArithmeticConfig)
    num_synthetic: int = 20000
    question_field: str = "question"
    answer_field: str | None = "answer"
    answer_format: AnswerFormat = AnswerFormat.AUTO
    tests_field: str | None = None
    kind_field: str | None = None
    template: str = "r1_zero"
    max_prompt_tokens: int | None = None
    on_error: OnError = OnError.RAISE
    tokenizer: str | None = None
    seed: int = 0

    # sample field a reward reads (rewards/registry.py SAMPLE_FIELDS) -> the key naming its record field
    FIELD_KEYS = {"answer": "answer_field", "tests": "tests_field"}

    def __post_init__(self):
        if bool(self.paths) == (self.synthetic is not None):
            raise ValueError(f"data: set exactly one of data.paths (prompt files) and data.synthetic, got "
                             f"paths={self.paths!r}, synthetic={self.synthetic!r}")
        if self.synthetic not in (None, "arithmetic"):
            raise ValueError(f"data.synthetic must be 'arithmetic' (the built-in task), got {self.synthetic!r}")
        if isinstance(self.arithmetic, dict):
            self.arithmetic = ArithmeticConfig(**self.arithmetic)
        self.answer_format = parse_enum(AnswerFormat, self.answer_format, "data.answer_format")
        self.on_error = parse_enum(OnError, self.on_error, "data.on_error")

    def missing_field(self, field: str) -> str | None:
        """Why records will not have the sample field `field` (e.g. "tests"), None when they will."""
        if self.synthetic is not None:
            return None if field == "answer" else f"the synthetic {self.synthetic} task has no {field}"
        key = self.FIELD_KEYS[field]
        return f"set data.{key}" if getattr(self, key) is None else None


@dataclasses.dataclass
class RolloutConfig:
    """Generation: `prompts_per_step` prompts (global, over data-parallel ranks) × `group_size` samples each.
    R1-Zero: G = 16, 32 prompts per step, temperature 1 (docs/r1_reference.md)."""

    prompts_per_step: int = 32
    group_size: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 1024
    max_batch_size: int = 256  # sequences decoded together per rank
    offload_training_state: bool = False  # GPU: optimizer state and grad buffers in host memory while generating
    cache: CacheConfig = dataclasses.field(default_factory=CacheConfig)  # the paged KV cache (block size, size)
    graphs: GraphConfig = dataclasses.field(default_factory=GraphConfig)  # CUDA-graph decode (GPU)
    pipeline_micro_batches: int | None = None  # pp > 1: micro-batches per generation step (None: the pp size)

    def __post_init__(self):
        _positive("rollout", prompts_per_step=self.prompts_per_step, group_size=self.group_size,
                  max_new_tokens=self.max_new_tokens, max_batch_size=self.max_batch_size)
        if self.pipeline_micro_batches is not None:
            _positive("rollout", pipeline_micro_batches=self.pipeline_micro_batches)
        if not self.temperature > 0:
            raise ValueError(f"rollout.temperature must be > 0 for RL sampling, got {self.temperature!r}")
        try:
            SamplingParams(n=self.group_size, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                           max_new_tokens=self.max_new_tokens)
        except ValueError as e:
            raise ValueError(f"rollout: {e}") from None


@dataclasses.dataclass
class AlgorithmConfig:
    """GRPO (DeepSeekMath §4.1) and its common variants.

    kl_coef β (0 = no reference model); kl_estimator k1/k2/k3; clip_eps_low/high ε, any ε >= 0 (clip-higher: high >
    low; R1's stage-1 RL uses ε = 10, where the lower bound 1 − ε < 0 never binds);
    dual_clip c (> 1) bounds the loss of negative-advantage tokens; loss_agg: how token losses reduce
    (seq-mean-token-mean = R1's 1/G Σ 1/|o_i| Σ_t); advantage_std: sample / population / none (Dr.GRPO, with
    loss_agg seq-mean-token-sum-norm for its constant normaliser); mini_batches optimizer steps per rollout,
    epochs μ passes over them; micro_batch_size sequences per forward/backward; ref_refresh_steps K (0 = never):
    the reference becomes the current policy every K steps; dynamic_sampling (DAPO): drop groups whose rewards are
    all equal and sample more prompts, up to dynamic_sampling_rounds extra rounds; mask_truncated: completions that
    hit max_new_tokens get no loss; recompute_old_logprobs: a forward pass gives the old-policy log-probabilities
    instead of the engine's (which are the same weights, so equal up to reduction order);
    max_tokens_per_micro_batch: pack several sequences into each of the micro-batch's micro_batch_size rows, up to
    that many tokens per row (null: one sequence per row, right-padded to the step's longest).

    Numerical guards (verl's and NeMo-RL's defaults; null turns one off, 0 is an error): the ratio is
    exp(clamp(logp − old, ±log_ratio_clamp)); k3 clamps its d = ref − logp to ±kl_log_ratio_clamp and caps its value
    at kl_value_clamp; no gradient flows where a clamp binds. Health bands (null: no warning): the step's clip
    fraction above health_clip_fraction_max, or its mean |train − rollout logprob| above health_mismatch_max, sets
    health/clip_fraction_warning or health/mismatch_warning to 1 and says so when it starts and when it ends
    (loss_health.py, docs/r1_reference.md)."""

    kl_coef: float = 0.001
    kl_estimator: str = "k3"
    clip_eps_low: float = 0.2
    clip_eps_high: float | None = None
    dual_clip: float | None = None
    loss_agg: str = "seq-mean-token-mean"
    advantage_std: str = "sample"
    advantage_eps: float = 1e-6
    mini_batches: int = 1
    epochs: int = 1
    micro_batch_size: int = 8
    ref_refresh_steps: int = 0
    ref_on_host: bool = False
    dynamic_sampling: bool = False
    dynamic_sampling_rounds: int = 3
    mask_truncated: bool = False
    recompute_old_logprobs: bool = False
    max_tokens_per_micro_batch: int | None = None
    log_ratio_clamp: float | None = 20.0
    kl_log_ratio_clamp: float | None = 20.0
    kl_value_clamp: float | None = 10.0
    health_clip_fraction_max: float | None = 0.2
    health_mismatch_max: float | None = 0.05

    def __post_init__(self):
        self.loss_config(1)  # validates the loss fields with their names
        check_bands(self.health_clip_fraction_max, self.health_mismatch_max)
        budget = self.max_tokens_per_micro_batch
        if budget is not None and (not isinstance(budget, int) or budget < 2):
            raise ValueError(f"algorithm.max_tokens_per_micro_batch must be an integer >= 2 (or null: no packing), "
                             f"got {budget!r}")
        parse_enum(AdvantageStd, self.advantage_std, "algorithm.advantage_std")
        _positive("algorithm", mini_batches=self.mini_batches, epochs=self.epochs,
                  micro_batch_size=self.micro_batch_size)
        if self.ref_refresh_steps < 0 or self.dynamic_sampling_rounds < 0:
            raise ValueError(f"algorithm.ref_refresh_steps and dynamic_sampling_rounds must be >= 0, got "
                             f"{self.ref_refresh_steps!r}, {self.dynamic_sampling_rounds!r}")

    def loss_config(self, norm_length: int) -> GRPOLossConfig:
        try:
            # normalizer 1: the loss returns a sum over units; Megatron divides by the global unit count
            return GRPOLossConfig(self.clip_eps_low, self.clip_eps_high, self.dual_clip, self.kl_coef,
                                  self.kl_estimator, 1.0, self.loss_agg, norm_length, 1.0, self.log_ratio_clamp,
                                  self.kl_log_ratio_clamp, self.kl_value_clamp)
        except ValueError as e:
            raise ValueError(f"algorithm.{e}") from None

    @property
    def uses_reference(self) -> bool:
        return self.kl_coef > 0


@dataclasses.dataclass
class RewardsConfig:
    """Weighted rule rewards (r1_megatron/rewards/registry.py) and model rewards (`models`: name -> a preference
    reward model or a generative judge, rewards/model_rewards.py), in one weighted sum: `weights` names either.
    `kinds`: a prompt's kind (data.kind_field) -> the rewards that score it (empty: every reward scores every
    prompt). `accuracy` names the reward reported as accuracy and `format` the one reported as format rate (None:
    not reported). plugin_modules: modules that register more rewards (imported by the reward workers too)."""

    weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"math_accuracy": 1.0, "format": 1.0})
    reward_kwargs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    models: dict[str, ModelRewardConfig] = dataclasses.field(default_factory=dict)
    kinds: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    accuracy: str | None = "math_accuracy"
    format: str | None = "format"
    num_workers: int = 2
    timeout_s: float = 10.0  # CPU seconds of one sample's scoring (rewards/runner.py)
    wall_timeout_s: float | None = None  # wall backstop (null: 3 × timeout_s); reaching it first means one retry
    worker_memory_bytes: int = 4 << 30  # each reward worker's address space; over it, the sample is a crash
    startup_timeout_s: float = 120.0  # worker start-up (imports), charged to no sample
    chunk_size: int = 16  # samples per round trip to a reward worker (each still has its own timeout)
    plugin_modules: list[str] = dataclasses.field(default_factory=list)
    max_failed_steps: int = 3  # stop when every sample's reward failed this many steps in a row (0: never)

    def __post_init__(self):
        self.models = {name: m if isinstance(m, ModelRewardConfig) else ModelRewardConfig(**m)
                       for name, m in self.models.items()}
        check_model_rewards(self.models, self.weights, self.kinds)
        for name in self.reward_kwargs:
            if name in self.models:
                raise ValueError(f"rewards.reward_kwargs names the model reward {name!r}: set its options in "
                                 f"rewards.models.{name}")
        try:  # reward names (plugins imported first), weights, workers, timeout, chunks
            self.runner_config()
        except (ValueError, ImportError) as e:
            raise ValueError(f"rewards: {e}") from None
        for role in ("accuracy", "format"):
            name = getattr(self, role)
            if name is not None and name not in self.weights:
                raise ValueError(f"rewards.{role}={name!r} is not one of the rewards in rewards.weights "
                                 f"({', '.join(self.weights)})")
        if not isinstance(self.max_failed_steps, int) or self.max_failed_steps < 0:
            raise ValueError(f"rewards.max_failed_steps must be >= 0 (0: never stop), got {self.max_failed_steps!r}")

    @property
    def rule_weights(self) -> dict[str, float]:
        """The weights of the rule rewards (those the reward workers compute)."""
        return {name: w for name, w in self.weights.items() if name not in self.models}

    def runner_config(self):
        """The reward runner's config (rewards/runner.py) for the rule rewards; None when every reward is a model
        reward (no worker pool is needed)."""
        from r1_megatron.rewards.runner import RewardConfig

        if self.models and not self.rule_weights:
            return None
        return RewardConfig(weights=self.rule_weights, reward_kwargs=self.reward_kwargs, num_workers=self.num_workers,
                            timeout_s=self.timeout_s, wall_timeout_s=self.wall_timeout_s,
                            worker_memory_bytes=self.worker_memory_bytes, startup_timeout_s=self.startup_timeout_s,
                            chunk_size=self.chunk_size, plugin_modules=tuple(self.plugin_modules))


@dataclasses.dataclass
class WarmStartConfig:
    """An SFT stage on the task's (prompt, reference answer) pairs before RL (for the synthetic demo: RL needs some
    reward > 0 to learn from). Stops once greedy accuracy on `eval_prompts` held-out prompts reaches
    `target_accuracy`, checked every `eval_every` steps, or after `max_steps`; a prompt-file task has no held-out
    prompts and trains `max_steps` steps on its records. max_steps 0 = no warm start."""

    max_steps: int = 0
    target_accuracy: float = 0.2
    eval_every: int = 10
    eval_prompts: int = 200
    batch_size: int = 64
    lr: float = 3e-3

    def __post_init__(self):
        if self.max_steps < 0:
            raise ValueError(f"warm_start.max_steps must be >= 0, got {self.max_steps!r}")
        if self.max_steps:
            _positive("warm_start", eval_every=self.eval_every, eval_prompts=self.eval_prompts,
                      batch_size=self.batch_size)


@dataclasses.dataclass
class GRPORunConfig(RunConfig):
    """A whole GRPO run: the sections every run has (training/run_sections.py: run_dir, seed, model, parallel,
    optimizer, checkpoint, logging), GRPO's own, the periodic evaluation (evaluation/config.py) and the MoE
    routers' RL settings (grpo/router_rl.py)."""

    DEFAULT_RECIPE: ClassVar[Path] = Path(__file__).resolve().parent / "recipes" / "tiny_demo.yaml"

    run_dir: str = "runs/grpo"
    steps: int = 100
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(synthetic="arithmetic"))
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = dataclasses.field(default_factory=AlgorithmConfig)
    rewards: RewardsConfig = dataclasses.field(default_factory=RewardsConfig)
    warm_start: WarmStartConfig = dataclasses.field(default_factory=WarmStartConfig)
    evaluation: TrainingEvalConfig = dataclasses.field(default_factory=TrainingEvalConfig)
    router: RouterRLConfig = dataclasses.field(default_factory=RouterRLConfig)  # MoE policies (grpo/router_rl.py)

    def __post_init__(self):
        _positive("run", steps=self.steps)
        if self.warm_start.max_steps and self.data.synthetic is None and self.data.answer_field is None:
            raise ValueError(f"warm_start.max_steps={self.warm_start.max_steps}: the warm start trains on each "
                             "record's reference answer, and data.answer_field is null")
        total = self.rollout.prompts_per_step * self.rollout.group_size
        if total % self.algorithm.mini_batches:
            raise ValueError(f"algorithm.mini_batches={self.algorithm.mini_batches} must divide the rollout's "
                             f"prompts_per_step × group_size = {total} sequences")
        self._check_reward_fields()

    def _check_reward_fields(self) -> None:
        """Every reward gets the record fields it declared it reads (register_reward(needs=...)): otherwise each
        of its samples fails in the reward workers, hours into the run instead of now."""
        from r1_megatron.rewards.registry import reward_needs

        kinds = self.rewards.kinds
        if kinds and self.data.kind_field is None and "default" not in kinds:
            raise ValueError(f"rewards.kinds has no 'default' entry, and data.kind_field is null (every prompt's "
                             f"kind is 'default'); kinds: {', '.join(kinds)}")
        for name in self.rewards.rule_weights:
            for field in reward_needs(name):
                missing = self.data.missing_field(field)
                if missing is not None:
                    raise ValueError(f"rewards.weights has {name}, which reads each record's {field}: {missing}")
