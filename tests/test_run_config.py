"""Run configs: every recipe loads, overrides, one-line errors naming source/line/key, dump -> load round trip, and
the launch scripts' command lines (with stub torchrun/srun/scontrol)."""
from __future__ import annotations

import dataclasses
import enum
import os
import subprocess
import sys
from pathlib import Path

import pytest

from r1_megatron.grpo.config import GRPORunConfig
from r1_megatron.models.presets import preset
from r1_megatron.rollout.cache_config import layer_kv_bytes_per_token
from r1_megatron.run_config import DEFAULT_RECIPE, ConfigError, dump_run_config, load_run_config
from r1_megatron.runtime import ParallelConfig
from r1_megatron.training.optimizer import LRDecay

REPO = Path(__file__).resolve().parents[1]
PIPELINE_RECIPES = {"r1_pipeline_deepseek-v3_64nodes.yaml"}  # `r1-megatron pipeline` (tests/pipeline/test_recipes.py)
EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.yaml") if p.name not in PIPELINE_RECIPES)
GPU_RECIPES = {  # recipe -> (model preset, world size)
    "qwen2.5-math-7b_1node.yaml": ("qwen2.5-math-7b", 8),
    "moonlight-16b-a3b_2nodes.yaml": ("moonlight-16b-a3b", 16),
    "deepseek-v3-671b_r1zero_64nodes.yaml": ("deepseek-v3-671b", 512),
}
SFT_RECIPES = {  # `r1-megatron train sft` recipe -> (model preset, world size)
    "distill_qwen2.5-math-1.5b_1node.yaml": ("qwen2.5-math-1.5b", 8),
    "distill_qwen2.5-math-7b_1node.yaml": ("qwen2.5-math-7b", 8),
    "distill_llama-3.1-8b_1node.yaml": ("llama-3.1-8b", 8),
    "distill_qwen2.5-14b_2nodes.yaml": ("qwen2.5-14b", 16),
    "distill_qwen2.5-32b_4nodes.yaml": ("qwen2.5-32b", 32),
    "distill_llama-3.3-70b_8nodes.yaml": ("llama-3.3-70b", 64),
    "deepseek-v3-671b_cold_start_64nodes.yaml": ("deepseek-v3-671b", 512),
}


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(path, overrides=(), cls=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_run_config(path, overrides, cls) if cls else load_run_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ---- recipes ----------------------------------------------------------------------------------------------------


def test_examples_folder_has_every_recipe():
    assert {p.name for p in EXAMPLES} == set(GPU_RECIPES) | set(SFT_RECIPES)
    assert PIPELINE_RECIPES <= {p.name for p in (REPO / "examples").glob("*.yaml")}


def _config_class(path):
    from r1_megatron.sft.config import SFTRunConfig

    return SFTRunConfig if path is not None and path.name in SFT_RECIPES else GRPORunConfig


@pytest.mark.parametrize("path", [None, *EXAMPLES], ids=lambda p: "tiny_demo" if p is None else p.name)
def test_every_recipe_loads_and_round_trips(path, tmp_path):
    cls = _config_class(path)
    cfg = load_run_config(path, [], cls=cls)
    assert isinstance(cfg, cls)
    dumped = write(tmp_path, dump_run_config(cfg), "config.yaml")
    assert load_run_config(dumped, [], cls=cls) == cfg


@pytest.mark.parametrize("name", sorted(SFT_RECIPES))
def test_sft_recipes_fit_their_world_size_and_use_r1s_settings(name):
    from r1_megatron.models import preset
    from r1_megatron.sft.config import SFTRunConfig

    cfg = load_run_config(REPO / "examples" / name, [], cls=SFTRunConfig)
    model, world = SFT_RECIPES[name]
    assert cfg.parallel.data_parallel_size(world) >= 1
    config = preset(model)
    assert config.num_attention_heads % cfg.parallel.tp == 0 and config.num_layers % cfg.parallel.pp == 0
    o = cfg.optimizer
    assert o.decay.value == "cosine" and o.min_lr == pytest.approx(o.lr / 10) and o.distributed_optimizer
    r1_lr = {"qwen2.5-math-1.5b": 1e-4, "qwen2.5-math-7b": 8e-5, "qwen2.5-14b": 7e-5, "qwen2.5-32b": 6e-5,
             "llama-3.1-8b": 5e-5, "llama-3.3-70b": 2e-5}
    if model in r1_lr:
        assert o.lr == r1_lr[model] and 2 <= cfg.training.epochs <= 3 and cfg.data.template.value == "r1_distill"


def test_the_sft_default_is_the_packaged_tiny_recipe():
    from r1_megatron.sft.config import SFTRunConfig

    cfg = load_run_config(None, [], cls=SFTRunConfig)
    assert (cfg.model.preset, cfg.data.synthetic, cfg.training.max_tokens_per_micro_batch) == ("tiny-dense", "chat",
                                                                                              256)


def test_default_is_the_packaged_tiny_demo():
    cfg = load_run_config(None, [])
    assert cfg == load_run_config(DEFAULT_RECIPE, [])
    assert (cfg.run_dir, cfg.steps, cfg.seed) == ("runs/tiny_demo-{time}", 500, 0)
    assert (cfg.model.preset, cfg.model.vocab_size, cfg.model.dtype) == ("demo-moe", None, "fp32")
    assert (cfg.data.synthetic, cfg.data.template, cfg.data.num_synthetic) == ("arithmetic", "raw", 20000)
    r = cfg.rollout
    assert (r.prompts_per_step, r.group_size, r.temperature, r.max_new_tokens, r.max_batch_size) == (32, 8, 1.0, 4, 256)
    a = cfg.algorithm
    assert (a.kl_coef, a.mini_batches, a.epochs, a.micro_batch_size, a.loss_agg) == (0.0, 1, 1, 256, "token-mean")
    o = cfg.optimizer
    assert (o.lr, o.warmup_steps, o.clip_grad, o.adam_beta2) == (3e-4, 0, 1.0, 0.999)
    assert cfg.rewards.weights == {"arithmetic_exact": 1.0} and cfg.rewards.format is None
    assert (cfg.rewards.accuracy, cfg.rewards.num_workers) == ("arithmetic_exact", 1)
    w = cfg.warm_start
    assert (w.max_steps, w.target_accuracy, w.eval_every, w.eval_prompts, w.batch_size, w.lr) == \
        (1000, 0.2, 10, 200, 64, 1e-3)
    assert (cfg.checkpoint.every_steps, cfg.checkpoint.export_hf) == (100, True)
    assert (cfg.logging.tensorboard, cfg.logging.progress) == (True, True)


@pytest.mark.parametrize("name", sorted(GPU_RECIPES))
def test_gpu_recipe_fits_its_model_and_cluster(name):
    """The layout divides the world, TP divides the (KV) heads, EP the experts, and prompt + completion fit the
    model's context; each update is R1's 32 prompts x 16 samples."""
    cfg = load_run_config(REPO / "examples" / name, [])
    model_name, world = GPU_RECIPES[name]
    model = preset(model_name)
    p = cfg.parallel
    layout = ParallelConfig(tp=p.tp, pp=p.pp, ep=p.ep, etp=p.etp, sp=p.sp)
    dp = layout.data_parallel_size(world)
    assert p.tp <= 8 and model.num_attention_heads % p.tp == 0 and model.num_kv_heads % p.tp == 0
    assert model.num_layers % p.pp == 0
    if model.moe is not None:
        assert model.moe.num_experts % p.ep == 0
    assert cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens <= model.max_position_embeddings
    r, a = cfg.rollout, cfg.algorithm
    assert (r.group_size, r.temperature, a.kl_coef, a.kl_estimator, a.epochs, cfg.optimizer.lr) == \
        (16, 1.0, 0.001, "k3", 1, 3e-6)
    assert r.prompts_per_step // a.mini_batches == 32 and r.prompts_per_step % a.mini_batches == 0
    assert a.ref_refresh_steps * a.mini_batches == 400  # R1 refreshes the reference every 400 updates
    assert (r.prompts_per_step * r.group_size // a.mini_batches) % dp == 0  # each update splits evenly over DP
    assert cfg.optimizer.distributed_optimizer and cfg.model.path and cfg.data.paths
    assert set(cfg.rewards.weights) == {"math_accuracy", "format"} and cfg.data.template == "r1_zero"


def test_r1_zero_671b_recipe_is_r1s_schedule():
    cfg = load_run_config(REPO / "examples" / "deepseek-v3-671b_r1zero_64nodes.yaml", [])
    p, r, a = cfg.parallel, cfg.rollout, cfg.algorithm
    assert (p.tp, p.pp, p.ep, p.etp) == (8, 1, 256, 1)
    assert r.prompts_per_step * r.group_size == 8192 and a.mini_batches == 16  # R1: 8,192 outputs, 16 mini-batches
    assert r.max_new_tokens == 32768 and cfg.steps * a.mini_batches == 10400


# ---- the memory arithmetic in the recipes and docs/launching.md --------------------------------------------------


def parameter_counts(model) -> tuple[int, int, int]:
    """(split over TP, replicated on every TP rank, routed-expert) parameters of a ModelConfig, by formula."""
    h, heads, mla, moe = model.hidden_size, model.num_attention_heads, model.mla, model.moe
    split = model.vocab_size * h * (1 if model.tie_word_embeddings else 2)
    replicated = h  # final norm
    for layer in range(model.num_layers):
        replicated += 2 * h  # input and pre-MLP norms
        if mla:
            qk, q_rank = mla.qk_nope_head_dim + mla.qk_rope_head_dim, mla.q_lora_rank
            replicated += (h * q_rank + q_rank if q_rank else 0) + h * (mla.kv_lora_rank + mla.qk_rope_head_dim) \
                + mla.kv_lora_rank
            split += (q_rank or h) * heads * qk + mla.kv_lora_rank * heads * (mla.qk_nope_head_dim + mla.v_head_dim) \
                + heads * mla.v_head_dim * h
        else:
            qkv = (heads + 2 * model.num_kv_heads) * model.head_dim
            split += h * qkv + qkv * model.qkv_bias + heads * model.head_dim * h
        if moe is None or layer < moe.first_k_dense:
            split += 3 * h * model.ffn_hidden_size
        else:
            split += moe.num_shared_experts * 3 * h * moe.ffn_hidden_size
            replicated += moe.num_experts * h  # router (the expert bias is a buffer)
    if moe is None:
        return split, replicated, 0
    return split, replicated, (model.num_layers - moe.first_k_dense) * moe.num_experts * 3 * h * moe.ffn_hidden_size


def tiny_variants():
    from r1_megatron.models.config import ModelConfig

    tiny = preset("tiny-moe")
    yield tiny
    yield dataclasses.replace(tiny, mla=dataclasses.replace(tiny.mla, q_lora_rank=16))
    yield ModelConfig(architecture="qwen2", vocab_size=64, hidden_size=64, num_layers=2, num_attention_heads=4,
                      num_kv_heads=2, ffn_hidden_size=96, qkv_bias=True)


@pytest.mark.parametrize("index", range(3))
def test_parameter_formula_matches_built_models(index):
    from r1_megatron.models import build_model
    from r1_megatron.runtime import ensure_parallel_state

    ensure_parallel_state()
    model = list(tiny_variants())[index]
    assert sum(parameter_counts(model)) == sum(p.numel() for p in build_model(model).parameters())


def static_gb(recipe: str) -> float:
    """Per-GPU bf16 weights + fp32 gradients + distributed fp32 master/Adam state for a GPU recipe."""
    cfg = load_run_config(REPO / "examples" / recipe, [])
    model_name, world = GPU_RECIPES[recipe]
    split, replicated, routed = parameter_counts(preset(model_name))
    p = cfg.parallel
    etp = p.tp if p.etp is None else p.etp
    dense, experts = split / p.tp + replicated, routed / (p.ep * etp)
    dp, expert_dp = world // (p.tp * p.pp), world // (p.ep * etp * p.pp)
    return (6 * (dense + experts) + 12 * dense / dp + 12 * experts / expert_dp) / 1e9


def test_documented_memory_arithmetic():
    split, replicated, routed = parameter_counts(preset("deepseek-v3-671b"))
    assert (round(split / 1e6), round(replicated / 1e6), round(routed / 1e6)) == (16087, 1031, 653909)
    assert round((split + replicated + routed) / 1e6) == 671026
    assert round(static_gb("deepseek-v3-671b_r1zero_64nodes.yaml"), 2) == 49.47
    assert round(static_gb("qwen2.5-math-7b_1node.yaml"), 2) == 34.27
    assert round(static_gb("moonlight-16b-a3b_2nodes.yaml"), 2) == 32.16
    # KV cache bytes per token per GPU at TP 8 in bf16, by the function the engine sizes its cache with
    v3, sequence, long_sequence = preset("deepseek-v3-671b"), 1024 + 32768, 1024 + 65536
    latent, expanded = (v3.num_layers * layer_kv_bytes_per_token(v3, 8, 2, mode) for mode in (True, False))
    assert (latent, expanded) == (70272, 624640)
    assert v3.num_layers * layer_kv_bytes_per_token(v3, 1, 2, mla_latent=False) == 4997120
    assert v3.num_layers * layer_kv_bytes_per_token(v3, 1, 2, mla_latent=True) == latent  # replicated over TP
    assert (round(latent * sequence / 1e9, 2), round(expanded * sequence / 1e9, 2)) == (2.37, 21.11)
    assert (round(latent * long_sequence / 1e9, 2), round(expanded * long_sequence / 1e9, 2)) == (4.68, 41.58)
    free = (80 - 11.19 - 5) * 1e9  # per GPU while generating: less the bf16 weights and ~5 GB context/buffers
    assert (int(free // (latent * sequence)), int(free // (latent * long_sequence))) == (26, 13)
    moonlight = preset("moonlight-16b-a3b")
    per_token = moonlight.num_layers * layer_kv_bytes_per_token(moonlight, 1, 2, mla_latent=True)
    assert (per_token, round(per_token * 8192 / 1e9, 3), round(128 * per_token * 8192 / 1e9, 1)) == (31104, 0.255, 32.6)


# ---- overrides ----------------------------------------------------------------------------------------------------


def test_overrides_nested_list_null_bool_enum_dict():
    cfg = load_run_config(None, [
        "algorithm.kl_coef=0.01", "rollout.group_size=4", "data.synthetic=null", "data.paths=[a.jsonl, b.jsonl]",
        "logging.tensorboard=false", "optimizer.decay=cosine", "optimizer.decay_steps=50",
        "rewards.weights.arithmetic_exact=2", "data.arithmetic.num_digits=3", "model.vocab_size=null",
        "run_dir=/tmp/x y", "warm_start.max_steps=0"])
    assert cfg.algorithm.kl_coef == 0.01 and cfg.rollout.group_size == 4
    assert cfg.data.paths == ["a.jsonl", "b.jsonl"] and cfg.data.synthetic is None
    assert cfg.logging.tensorboard is False and cfg.optimizer.decay is LRDecay.COSINE
    assert cfg.rewards.weights == {"arithmetic_exact": 2.0} and type(cfg.rewards.weights["arithmetic_exact"]) is float
    assert cfg.data.arithmetic.num_digits == 3 and cfg.data.arithmetic.pad is True  # frozen nested, others kept
    assert cfg.model.vocab_size is None and cfg.run_dir == "/tmp/x y"


def test_numbers_int_promotes_to_float_and_yaml11_exponents_are_floats():
    cfg = load_run_config(None, ["algorithm.kl_coef=1", "optimizer.lr=3e-6", "data.paths=one.jsonl",
                                 "data.synthetic=null", "warm_start.max_steps=0"])
    assert type(cfg.algorithm.kl_coef) is float and cfg.algorithm.kl_coef == 1.0
    assert cfg.optimizer.lr == 3e-6  # PyYAML reads "3e-6" as a string; float fields take the numeral
    assert cfg.data.paths == ["one.jsonl"]


@pytest.mark.parametrize("override, expected", [
    ("rollout.group_size=8.0", "command line: rollout.group_size: expected int, got 8.0"),
    ("rollout.group_size=true", "command line: rollout.group_size: expected int, got True"),
    ("algorithm.mini_batches=two", "command line: algorithm.mini_batches: expected int, got 'two'"),
    ("algorithm.kl_coef=true", "command line: algorithm.kl_coef: expected float, got True"),
    ("logging.progress=1", "command line: logging.progress: expected bool, got 1"),
    ("run_dir=12", "command line: run_dir: expected str, got 12 (quote it to pass a string)"),
    ("optimizer.decay=cos", "command line: optimizer.decay: expected one of 'constant', 'cosine', 'linear', got 'cos'"),
    ("rewards.weights=[a]", "command line: rewards.weights: expected a mapping, got ['a']"),
    ("rollout=3", "command line: rollout: expected a mapping of RolloutConfig fields, got 3"),
    ("model.vocab_size=null.5", "command line: model.vocab_size: expected int, got 'null.5'"),
])
def test_wrong_types_are_refused_naming_the_key(override, expected):
    assert config_error(None, [override]) == expected


@pytest.mark.parametrize("override, expected", [
    ("rollout.cache.block_size=0", "command line: rollout.cache.block_size must be an int >= 1, got 0"),
    ("rollout.cache.num_blocks=1.5", "command line: rollout.cache.num_blocks: expected int, got 1.5"),
    ("rollout.graphs.batch_sizes=[8,4]", "command line: rollout.graphs.batch_sizes must be increasing ints >= 1, "
                                         "got (8, 4)"),
    ("rollout.pipeline_micro_batches=0", "command line: rollout.pipeline_micro_batches must be a positive integer, "
                                         "got 0"),
    ("rewards.chunk_size=0", "command line: rewards: RewardConfig.chunk_size must be >= 1, got 0"),
])
def test_engine_and_reward_runner_settings_are_checked(override, expected):
    assert config_error(None, [override]) == expected


def test_unknown_override_key_suggests():
    assert config_error(None, ["algorithm.kl_cof=0.1"]) == \
        "command line: unknown key 'algorithm.kl_cof' (did you mean 'kl_coef'?)"
    assert config_error(None, ["rollout.kl_coef=0.1"]) == \
        "command line: unknown key 'rollout.kl_coef' (did you mean 'algorithm.kl_coef'?)"
    assert config_error(None, ["nonsense_key=1"]) == "command line: unknown key 'nonsense_key'"
    # a misspelled section exists only on the command line: the recipe file is not blamed for it
    assert config_error(None, ["algorithmm.kl_coef=0.1"]) == \
        "command line: unknown key 'algorithmm' (did you mean 'algorithm'?)"


def test_malformed_overrides():
    assert config_error(None, ["foo"]).startswith("command line: override 'foo' must be key=value")
    assert config_error(None, ["=3"]).startswith("command line: override '=3' must be key=value")
    assert config_error(None, ["algorithm..kl_coef=1"]).startswith("command line: override")
    assert "'algorithm.kl_coef' is a value (0.0), not a section" in config_error(None, ["algorithm.kl_coef.x=1"])
    assert config_error(None, ["data.paths=[a"]).startswith("command line: override 'data.paths=[a': invalid value")


# ---- errors from files ------------------------------------------------------------------------------------------


def test_unknown_key_in_file_names_file_line_and_suggestion(tmp_path):
    path = write(tmp_path, "steps: 3\nalgorithm:\n  kl_coef: 0.1\n  kl_cof: 0.2\n")
    assert config_error(path) == f"{path}:4: unknown key 'algorithm.kl_cof' (did you mean 'kl_coef'?)"
    path = write(tmp_path, "data:\n  arithmetic:\n\n    num_digit: 1\n")
    assert config_error(path) == f"{path}:4: unknown key 'data.arithmetic.num_digit' (did you mean 'num_digits'?)"


def test_wrong_type_in_file_names_the_line(tmp_path):
    path = write(tmp_path, "rollout:\n  group_size: 8\n  max_new_tokens: lots\n")
    assert config_error(path) == f"{path}:3: rollout.max_new_tokens: expected int, got 'lots'"
    path = write(tmp_path, "data:\n  synthetic: null\n  paths:\n    - a.jsonl\n    - 7\n")
    assert config_error(path) == f"{path}:5: data.paths[1]: expected str, got 7 (quote it to pass a string)"


def test_invalid_yaml_names_line_and_column(tmp_path):
    path = write(tmp_path, "steps: 3\nalgorithm:\n  kl_coef: 0.1\n   mini_batches: 2\n")
    assert config_error(path) == f"{path}:4:16: invalid YAML: mapping values are not allowed here"
    path = write(tmp_path, "data:\n  paths: [a.jsonl\nsteps: 3\n")
    assert config_error(path).startswith(f"{path}:3:")


def test_other_file_problems(tmp_path):
    assert config_error(tmp_path / "missing.yaml") == f"{tmp_path / 'missing.yaml'}: no such recipe file"
    path = write(tmp_path, "steps: 3\nseed: 1\nsteps: 4\n")
    assert config_error(path) == f"{path}:3: duplicate key 'steps' (first at {path}:1)"
    path = write(tmp_path, "- steps\n")
    assert config_error(path) == f"{path}: expected a mapping of sections at the top level, got ['steps']"
    assert load_run_config(write(tmp_path, "# nothing\n"), []) == GRPORunConfig()


def test_empty_section_means_defaults(tmp_path):
    path = write(tmp_path, "steps: 3\nlogging:\nrollout:  # nothing set here yet\n")
    assert load_run_config(path, []).logging == GRPORunConfig().logging
    assert load_run_config(path, ["rollout.group_size=4"]).rollout.group_size == 4


def test_validation_errors_are_reraised_with_their_source(tmp_path):
    path = write(tmp_path, "steps: 3\nrollout:\n  group_size: 4\n  temperature: 0\n")
    assert config_error(path) == f"{path}:4: rollout.temperature must be > 0 for RL sampling, got 0.0"
    assert config_error(path, ["rollout.temperature=-1"]) == \
        "command line: rollout.temperature must be > 0 for RL sampling, got -1.0"
    path = write(tmp_path, "data:\n  arithmetic: {num_digits: 12}\n")
    assert config_error(path) == f"{path}:2: ArithmeticConfig.num_digits must be in 1..9, got 12"
    # a cross-section check (GRPORunConfig.__post_init__) names the key given on the command line
    assert config_error(None, ["algorithm.mini_batches=3"]).startswith(
        "command line, tiny_demo.yaml:22: algorithm.mini_batches=3 must divide")
    # a rule about two keys from two sources names both
    assert config_error(None, ["model.path=/m"]).startswith("tiny_demo.yaml:14, command line: model: set exactly one")
    # the warm start is an SFT stage on the task's reference answers: prompt files need their answer field
    assert load_run_config(None, ["data.synthetic=null", "data.paths=[a.jsonl]"]).warm_start.max_steps == 1000
    assert config_error(None, ["data.synthetic=null", "data.paths=[a.jsonl]", "data.answer_field=null",
                               "rewards.weights={format: 1.0}", "rewards.accuracy=null"]).startswith(
        "tiny_demo.yaml:52, command line: warm_start.max_steps=1000: the warm start trains on each record's "
        "reference answer, and data.answer_field is null")


# ---- the generic builder on a schema of its own -----------------------------------------------------------------


class Mode(str, enum.Enum):
    FAST = "fast"
    SLOW = "slow"


@dataclasses.dataclass(frozen=True)
class Inner:
    size: int
    scale: float = 1.0


@dataclasses.dataclass
class Outer:
    inner: Inner
    mode: Mode = Mode.FAST
    ids: list[int] = dataclasses.field(default_factory=list)
    table: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    either: int | str = 0
    maybe: Inner | None = None

    def __post_init__(self):
        if self.inner.size > 100:
            raise ValueError(f"Outer: inner.size must be <= 100, got {self.inner.size}")


def test_generic_schema_builds_and_round_trips(tmp_path):
    path = write(tmp_path, "inner: {size: 3}\nmode: slow\nids: [1, 2]\ntable: {a: [1, 2.5]}\neither: x\n"
                           "maybe: {size: 1, scale: 2}\n")
    cfg = load_run_config(path, ["inner.scale=4"], cls=Outer)
    assert cfg == Outer(Inner(3, 4.0), Mode.SLOW, [1, 2], {"a": [1.0, 2.5]}, "x", Inner(1, 2.0))
    again = load_run_config(write(tmp_path, dump_run_config(cfg), "dump.yaml"), [], cls=Outer)
    assert again == cfg and again.mode is Mode.SLOW
    assert load_run_config(path, ["maybe=null", "either=5"], cls=Outer).maybe is None


def test_generic_schema_errors(tmp_path):
    path = write(tmp_path, "mode: fast\n")
    assert config_error(path, cls=Outer) == f"{path}: missing required key 'inner'"
    assert config_error(path, ["inner.size=1", "ids=[1, x]"], cls=Outer) == \
        "command line: ids[1]: expected int, got 'x'"
    assert config_error(path, ["inner.size=1", "either=[1]"], cls=Outer) == \
        "command line: either: expected int or str, got [1]"
    assert config_error(path, ["inner.size=1", "table.a=[true]"], cls=Outer) == \
        "command line: table.a[0]: expected float, got True"
    # every float must be finite, wherever it sits: a field, a dict value, a list item; an integer literal beyond
    # float's range is inf too
    assert config_error(path, ["inner.size=1", "table.a=[1.0, .nan]"], cls=Outer) == \
        "command line: table.a[1]: expected a finite float, got nan"
    assert config_error(path, ["inner.size=1", f"inner.scale=1{'0' * 400}"], cls=Outer) == \
        "command line: inner.scale: expected a finite float, got inf"
    assert config_error(path, ["inner.size=1000"], cls=Outer) == \
        "command line: Outer: inner.size must be <= 100, got 1000"
    assert config_error(path, ["inner.sise=1"], cls=Outer) == \
        "command line: unknown key 'inner.sise' (did you mean 'size'?)"


# ---- launch scripts ---------------------------------------------------------------------------------------------


def stub_bin(tmp_path: Path) -> dict[str, str]:
    """PATH with stub scontrol/srun/torchrun (torchrun writes its arguments to $STUB_OUT), then this interpreter."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {
        "scontrol": 'echo node-a; echo node-b\n',
        "srun": 'while [[ "$1" == -* ]]; do shift; done\nexec "$@"\n',
        "torchrun": 'if [[ "$1" == --help ]]; then echo "  --shutdown-timeout SHUTDOWN_TIMEOUT"; exit 0; fi\n'
                    'printf "%s\\n" "$@" "timeout=$TORCH_ELASTIC_SHUTDOWN_TIMEOUT" > "$STUB_OUT"\n',
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    path = os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable), os.environ["PATH"]])
    return {**os.environ, "PATH": path,
            "STUB_OUT": str(tmp_path / "torchrun_args")}


def run_script(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("script", ["launch_1node.sh", "launch_slurm.sbatch"])
def test_launch_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(REPO / "examples" / script)]).returncode == 0


def test_launch_1node_command_line(tmp_path):
    env = stub_bin(tmp_path)
    result = run_script(["examples/launch_1node.sh", "examples/moonlight-16b-a3b_2nodes.yaml", "steps=2"], env)
    assert result.returncode == 0, result.stderr
    assert Path(env["STUB_OUT"]).read_text().split("\n")[:-1] == [
        "--standalone", "--nproc-per-node=8", "-m", "r1_megatron", "train", "grpo",
        "--config", "examples/moonlight-16b-a3b_2nodes.yaml", "steps=2", "timeout=900"]
    result = run_script(["examples/launch_1node.sh"], {**env, "RESUME": "runs/x", "NPROC": "2"})
    assert result.returncode == 0, result.stderr
    assert Path(env["STUB_OUT"]).read_text().split("\n")[:3] == ["--standalone", "--nproc-per-node=2", "-m"]
    assert "--resume\nruns/x\ntimeout=900" in Path(env["STUB_OUT"]).read_text()


def test_launch_slurm_rendezvous_and_resume(tmp_path):
    env = {**stub_bin(tmp_path), "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "77"}
    run_dir = tmp_path / "run"
    args = ["examples/launch_slurm.sbatch", "examples/moonlight-16b-a3b_2nodes.yaml", f"run_dir={run_dir}"]
    result = run_script(args, env)
    assert result.returncode == 0, result.stderr
    torchrun_args = Path(env["STUB_OUT"]).read_text().split("\n")[:-1]
    assert torchrun_args == [
        "--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=node-a:29500", "--rdzv-id=77",
        "-m", "r1_megatron", "train", "grpo", "--config", "examples/moonlight-16b-a3b_2nodes.yaml",
        f"run_dir={run_dir}", "timeout=1200"]
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("steps: 1\n")  # a run exists: resubmitting resumes it
    result = run_script(args, env)
    assert result.returncode == 0, result.stderr
    assert Path(env["STUB_OUT"]).read_text().split("\n")[9:12] == ["--resume", str(run_dir), f"run_dir={run_dir}"]
    Path(env["STUB_OUT"]).unlink()
    result = run_script([*args, "rollout.group_size=two"], env)  # a bad recipe stops before torchrun, in one line
    assert result.returncode != 0 and not Path(env["STUB_OUT"]).exists()
    assert result.stderr.strip().splitlines()[-1] == \
        "launch_slurm: command line: rollout.group_size: expected int, got 'two'"


def test_r1_stage_one_clip_of_ten_is_accepted():
    """R1's stage-1 RL uses ε = 10 (docs/r1_reference.md); it used to be refused as outside [0, 1)."""
    cfg = load_run_config(None, ["algorithm.clip_eps_low=10"])
    assert cfg.algorithm.loss_config(1).clip_low == -9.0 and cfg.algorithm.loss_config(1).clip_high == 11.0
    assert config_error(None, ["algorithm.clip_eps_low=-1"]).endswith("clip_eps_low=-1.0: must be a finite number >= 0")


def test_launch_scripts_run_sft_recipes(tmp_path):
    env = stub_bin(tmp_path)
    recipe = "examples/distill_qwen2.5-math-7b_1node.yaml"
    result = run_script(["examples/launch_1node.sh", recipe], {**env, "ALGORITHM": "sft"})
    assert result.returncode == 0, result.stderr
    assert Path(env["STUB_OUT"]).read_text().split("\n")[4:8] == ["train", "sft", "--config", recipe]
    slurm = {**env, "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "77", "ALGORITHM": "sft"}
    recipe = "examples/distill_qwen2.5-14b_2nodes.yaml"
    result = run_script(["examples/launch_slurm.sbatch", recipe, f"run_dir={tmp_path / 'run'}"], slurm)
    assert result.returncode == 0, result.stderr
    assert "train\nsft\n--config\n" + recipe in Path(env["STUB_OUT"]).read_text()
    result = run_script(["examples/launch_slurm.sbatch", recipe, "training.epochz=2"], slurm)
    assert result.returncode != 0 and "unknown key 'training.epochz'" in result.stderr
    result = run_script(["examples/launch_slurm.sbatch", recipe], {**slurm, "ALGORITHM": "ppo"})
    assert result.returncode != 0 and "ALGORITHM='ppo': expected one of grpo, sft" in result.stderr


def test_every_sft_dataset_option_is_a_run_config_key():
    from r1_megatron.sft.config import SFTRunConfig

    cfg = load_run_config(None, ["data.end_of_turn_token=<|endoftext|>", "data.shuffle=false",
                                 "data.validation_fraction=0.0"], cls=SFTRunConfig)
    dataset = cfg.data.dataset_config()
    assert (dataset.end_of_turn_token, dataset.shuffle, dataset.paths) == ("<|endoftext|>", False, ("synthetic:chat",))
    assert config_error(None, ["data.max_seq_len=1"], cls=SFTRunConfig) == \
        "command line: data.max_seq_len must be >= 2, got 1"
