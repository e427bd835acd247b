"""One whole GRPO step of r1_megatron (`r1-megatron train grpo`) against TRL's `GRPOTrainer`, same settings.

    python benchmarks/bench_grpo_step.py                        # the committed CPU run (results/grpo_step_cpu.json)
    python benchmarks/bench_grpo_step.py --smoke --out X.json   # CI size: 2 prompts x G 2, 4 tokens, 1 + 1 steps
    python benchmarks/bench_grpo_step.py --device cuda --out benchmarks/results/grpo_step_<device>.json

The peer needs TRL: `pip install -e ".[bench]"` pins trl==1.16.0, the version that works with transformers 5.24
and torch 2.13 (checked here; it brings accelerate and datasets). Without it the script stops and says so.

Method.
- Same model: one HF directory written once by transformers' save_pretrained (a random Qwen2, fp32; SIZES
  below: tiny, small) with a character-level tokenizer (id 0 pad, ids 1..95 the printable ASCII characters). Its EOS token
  has id 96 = vocab_size, outside the model's output layer, so neither side can sample it and every completion is
  exactly `new_tokens` long (checked: both sides report min = max completion length).
- Same work: `prompts` distinct prompts per step (random letter strings of `prompt_len` characters = tokens, no
  BOS, no template, so no padding) x G completions, temperature 1, top-p 1, top-k off; one optimizer step per
  rollout (μ = 1, one mini-batch, the whole rollout in one micro-batch); β = 0.04 with the k3 KL estimator against
  the initial weights (both load a reference model), ε = 0.2 both ways, per-sequence token-mean then mean over
  sequences (ours `loss_agg=seq-mean-token-mean`, TRL `loss_type="grpo"`), advantages (r − mean_G)/(std_G + 1e-4)
  with the sample std; Adam(W) lr 1e-5 constant, betas 0.9/0.999, eps 1e-8, no weight decay, gradient clipping
  at 1.0; fp32, no activation checkpointing.
- Same reward: the number of digit characters in the completion's text (`digit_count`; ours runs it in its
  sandboxed reward worker through benchmarks/grpo_step_reward.py, TRL in-process).
- Isolation: each side runs in its own subprocess with 1 torch thread (`torch.set_num_threads(1)` and
  OMP_NUM_THREADS=1), so nothing one side imports or patches (r1_megatron.cpu_compat, TRL's imports) touches
  the other's timings. The TRL worker never imports r1_megatron.
- Timing, per optimizer step (wall clock; on GPU TRL's timers synchronise CUDA, ours' phases end where the host
  reads results back):
  ours: the trainer's own metrics (metrics.jsonl): `time/step` (rollout → update), split into `time/generate`
  (engine.generate inside `engine.generating()`), `time/reward`, `time/logprobs` (reference forward),
  `time/train` (the optimizer step: forward, backward, Adam) and the remainder (advantages, batch building).
  TRL: a callback's on_step_begin → on_step_end is the step; the model's `generate` is wrapped and timed (that is
  TRL's generation call, sampling loop and KV cache included); "rest" = step − generate (tokenising, reward,
  reference and policy forward, backward, optimizer).
  Both also record the process's CPU time (time.process_time) per step and in generate (ours by wrapping the
  trainer's rollout / maybe_refresh_reference and engine.generate in its own process): with one thread it is
  the wall time less the time spent waiting for a core, so it is the steadier figure on a shared machine (it
  leaves out ours' reward worker processes, a few ms a step; on GPU it is host time only).
  Each side runs `rounds` times (a fresh process each; the order of the sides reversed in every other round) and
  each figure is the median over the steps after `warmup` of all rounds; ratios are ours / TRL (< 1: ours is
  faster).

Prints a table and writes one JSON object {"benchmark", "command", "env", "settings", "sizes": {SIZE: {"model",
"ours", "trl", "ratios_ours_over_trl", "ours_recipe", "raw"}}}.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import random
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import command_line, set_threads, write_payload  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_DIR = HERE / "results"
TRL_VERSION = "1.16.0"  # the pinned peer (setup.py extra "bench")

CHARS = string.printable[:95]  # digits, letters, punctuation, space: token ids 1..95
QWEN2 = dict(vocab_size=1 + len(CHARS), max_position_embeddings=512, rms_norm_eps=1e-6,
             rope_parameters=dict(rope_type="default", rope_theta=10000.0), tie_word_embeddings=False,
             pad_token_id=0, bos_token_id=None, eos_token_id=None)  # EOS: the tokenizer's, id EOS_ID
EOS_ID = QWEN2["vocab_size"]  # outside the output layer: never sampled
SIZES = {  # random Qwen2 sizes (as bench_sft.py's, with the intermediate size rounded)
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2),
}


@dataclasses.dataclass
class Settings:
    """Everything both workers are given (written to a JSON file each reads)."""

    prompts: int = 8
    group_size: int = 8
    new_tokens: int = 32
    prompt_len: int = 16
    warmup: int = 2
    steps: int = 8  # timed, after the warmup, per round
    rounds: int = 2  # of one worker per side, the order reversed in the second
    lr: float = 1e-5
    beta: float = 0.04
    epsilon: float = 0.2
    advantage_eps: float = 1e-4  # TRL's constant in (r - mean) / (std + eps)
    seed: int = 0
    threads: int = 1
    device: str = "cpu"


PHASES = ("step_s", "generate_s", "rest_s", "cpu_step_s", "cpu_generate_s", "cpu_rest_s")
SMOKE = dict(prompts=2, group_size=2, new_tokens=4, prompt_len=8, warmup=1, steps=1, rounds=1)


# ----------------------------------------------------------------------------------------------- the shared parts


def digit_count(text: str) -> float:
    """The benchmark's reward: how many characters of `text` are digits (deterministic, cheap, varies by sample)."""
    return float(sum(c.isdigit() for c in text))


def write_checkpoint(directory: Path, size: dict, seed: int) -> None:
    """A random Qwen2 (transformers' init, fp32) and its character-level tokenizer, in one HF directory."""
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    Qwen2ForCausalLM(Qwen2Config(**QWEN2, **size)).float().save_pretrained(directory)
    vocab = {"<pad>": 0, **{c: i + 1 for i, c in enumerate(CHARS)}}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([AddedToken("<pad>", special=True), AddedToken("<eos>", special=True)])
    if tokenizer.token_to_id("<eos>") != EOS_ID:
        raise RuntimeError(f"tokenizer: <eos> got id {tokenizer.token_to_id('<eos>')}, not {EOS_ID}")
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<eos>", "pad_token": "<pad>",
              "model_max_length": 512, "clean_up_tokenization_spaces": False}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_prompts(path: Path, s: Settings) -> list[str]:
    """(warmup + steps) x prompts distinct random letter strings, one {"question", "prompt"} JSON line each."""
    rng = random.Random(s.seed)
    texts: list[str] = []
    while len(texts) < (s.warmup + s.steps) * s.prompts:
        text = "".join(rng.choice(string.ascii_lowercase) for _ in range(s.prompt_len))
        if text not in texts:
            texts.append(text)
    path.write_text("".join(json.dumps({"question": t, "prompt": t}) + "\n" for t in texts))
    return texts


# ----------------------------------------------------------------------------------------------- ours


def ours_recipe(s: Settings, hf_dir: str, prompts_path: str, run_dir: str) -> dict:
    """The run config (a recipe for `r1-megatron train grpo --config`) with the benchmark's settings."""
    return {
        "run_dir": run_dir, "steps": s.warmup + s.steps, "seed": s.seed,
        "model": {"path": hf_dir, "dtype": "fp32"},
        "data": {"paths": [prompts_path], "question_field": "question", "answer_field": None, "template": "raw",
                 "seed": s.seed},
        "rollout": {"prompts_per_step": s.prompts, "group_size": s.group_size, "temperature": 1.0, "top_p": 1.0,
                    "top_k": 0, "max_new_tokens": s.new_tokens, "max_batch_size": s.prompts * s.group_size},
        "algorithm": {"kl_coef": s.beta, "kl_estimator": "k3", "clip_eps_low": s.epsilon, "clip_eps_high": None,
                      "loss_agg": "seq-mean-token-mean", "advantage_std": "sample",
                      "advantage_eps": s.advantage_eps, "mini_batches": 1, "epochs": 1,
                      "micro_batch_size": s.prompts * s.group_size},
        "optimizer": {"lr": s.lr, "warmup_steps": 0, "decay": "constant", "weight_decay": 0.0, "adam_beta1": 0.9,
                      "adam_beta2": 0.999, "adam_eps": 1e-8, "clip_grad": 1.0},
        "rewards": {"weights": {"bench_digit_count": 1.0}, "accuracy": None, "format": None, "num_workers": 1,
                    "plugin_modules": ["grpo_step_reward"]},
        "warm_start": {"max_steps": 0},
        "checkpoint": {"every_steps": 0, "export_hf": False},
        "logging": {"tensorboard": False, "progress": False, "samples_per_step": 0},
    }


def worker_ours(spec: dict) -> dict:
    """`r1-megatron train grpo --config RECIPE`, as the command runs it (training/run.py run_command), with this
    process's CPU time recorded per step and per generate call."""
    set_threads(spec["settings"]["threads"])
    import torch.distributed as dist
    import yaml

    from r1_megatron.grpo.config import GRPORunConfig
    from r1_megatron.grpo.trainer import GRPOTrainer
    from r1_megatron.training.metrics_log import read_metrics
    from r1_megatron.training.run import resolve_config

    recipe = Path(spec["tmp"]) / "ours_recipe.yaml"
    recipe.write_text(yaml.safe_dump(spec["recipe"], sort_keys=False))
    cpu = StepCPU()
    try:
        trainer = GRPOTrainer(resolve_config(GRPORunConfig, str(recipe), None, []))
        # a step runs rollout() ... maybe_refresh_reference() (trainer.train); generation is engine.generate
        trainer.rollout = cpu.starting(trainer.rollout)
        trainer.maybe_refresh_reference = cpu.ending(trainer.maybe_refresh_reference)
        trainer.engine.generate = cpu.generating(trainer.engine.generate)
        started = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - started
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    keys = ("time/step", "time/generate", "time/reward", "time/logprobs", "time/train", "response_length/mean",
            "response_length/max", "response_length/truncated_frac", "reward/total_mean", "loss/kl", "grad_norm")
    rows = read_metrics(spec["recipe"]["run_dir"])
    # train_wall_s: train() (the steps, logging, the final checkpoint), as TRL's train_wall_s is its train()
    return {"per_step": [{**{k: r[k] for k in keys if k in r}, **c} for r, c in zip(rows, cpu.steps, strict=True)],
            "train_wall_s": wall, "kernel_backend": os.environ.get("R1_MEGATRON_KERNELS", "auto")}


class StepCPU:
    """This process's CPU seconds (time.process_time) per step and in its generate calls. With one thread that is
    the wall time less the time the process waited for a core, so it stays comparable on a shared machine."""

    def __init__(self):
        self.steps: list[dict] = []
        self.t0, self.generate_s = 0.0, 0.0

    def start(self) -> None:
        self.t0, self.generate_s = time.process_time(), 0.0

    def end(self) -> None:
        self.steps.append({"cpu_step_s": time.process_time() - self.t0, "cpu_generate_s": self.generate_s})

    def starting(self, fn):
        def wrapped(*args, **kwargs):
            self.start()
            return fn(*args, **kwargs)
        return wrapped

    def ending(self, fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.end()
            return out
        return wrapped

    def generating(self, fn):
        def wrapped(*args, **kwargs):
            t0 = time.process_time()
            out = fn(*args, **kwargs)
            self.generate_s += time.process_time() - t0
            return out
        return wrapped


# ----------------------------------------------------------------------------------------------- TRL


def trl_config(s: Settings, out_dir: str):
    """GRPOConfig with the benchmark's settings; every default that would differ from ours is set explicitly."""
    from trl import GRPOConfig

    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    # transformers 5 renamed gradient_checkpointing to activation_checkpointing
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return GRPOConfig(
        output_dir=out_dir, max_steps=s.warmup + s.steps, per_device_train_batch_size=s.prompts * s.group_size,
        gradient_accumulation_steps=1, steps_per_generation=1, num_generations=s.group_size, num_iterations=1,
        max_completion_length=s.new_tokens, temperature=1.0, top_p=1.0, top_k=0, beta=s.beta, epsilon=s.epsilon,
        loss_type="grpo", scale_rewards="group", mask_truncated_completions=False, learning_rate=s.lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999,
        adam_epsilon=1e-8, max_grad_norm=1.0, bf16=False, fp16=False, model_init_kwargs={"dtype": "float32"},
        logging_strategy="steps", logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
        seed=s.seed, data_seed=s.seed, dataloader_num_workers=0, dataloader_pin_memory=False,
        use_cpu=s.device == "cpu", log_completions=False, **{checkpointing: False})


def worker_trl(spec: dict) -> dict:
    s = Settings(**spec["settings"])
    set_threads(s.threads)
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    def sync():
        if s.device == "cuda":
            torch.cuda.synchronize()

    def reward(prompts, completions, **kwargs):
        return [digit_count(c) for c in completions]

    tokenizer = AutoTokenizer.from_pretrained(spec["hf_dir"])
    data = Dataset.from_list([json.loads(line) for line in Path(spec["prompts"]).read_text().splitlines()])
    trainer = GRPOTrainer(model=spec["hf_dir"], reward_funcs=reward, args=trl_config(s, spec["tmp"] + "/trl"),
                          train_dataset=data.select_columns(["prompt"]), processing_class=tokenizer)
    model = trainer.model
    generate, gen_s, lengths = model.generate, [0.0], []

    def timed_generate(*args, **kwargs):
        sync()
        t0 = time.perf_counter()
        out = generate(*args, **kwargs)
        sync()
        gen_s[0] += time.perf_counter() - t0
        lengths.append((out.shape[1] - kwargs["input_ids"].shape[1], kwargs["input_ids"].shape[1]))
        return out

    cpu = StepCPU()
    # TRL calls the unwrapped model's generate (1 process: the model itself)
    model.generate = cpu.generating(timed_generate)
    per_step: list[dict] = []
    records: list[dict] = []  # what TRL logged each step

    class Timing(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sync()
            gen_s[0] = 0.0
            cpu.start()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync()
            wall = time.perf_counter() - self.t0
            cpu.end()
            per_step.append({"step_s": wall, "generate_s": gen_s[0], **cpu.steps[-1]})

        def on_log(self, args, state, control, logs=None, **kw):
            records.append(dict(logs or {}))

    trainer.add_callback(Timing())
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    keep = ("completions/min_length", "completions/max_length", "reward", "kl", "grad_norm", "step_time")
    return {"per_step": per_step, "train_wall_s": wall,
            "generate_shapes": [{"new_tokens": n, "prompt_len": p} for n, p in lengths],
            "logs": [{k: v for k, v in entry.items() if k in keep} for entry in records if "loss" in entry],
            "optimizer": type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                              else trainer.optimizer).__name__,
            "r1_megatron_imported": any(m.split(".")[0] == "r1_megatron" for m in sys.modules)}


# ----------------------------------------------------------------------------------------------- orchestration


def _worker_env(threads: int, device: str, side: str) -> dict:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    if device == "cpu":  # the PyTorch kernels: under TRITON_INTERPRET=1 Triton's interpreter would dominate
        env.setdefault("R1_MEGATRON_KERNELS", "torch")
    # benchmarks/ for the reward plugin (imported by ours' reward workers too), the repo for r1_megatron on our
    # side only: with the repo root on sys.path its kernels/ folder is importable as a top-level `kernels`, which
    # transformers probes for (the Hugging Face kernels package) and would import, r1_megatron with it
    paths = [str(HERE)] + ([str(REPO)] if side == "ours" else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_worker_process(side: str, spec: dict, tmp: Path, timeout: float) -> dict:
    """One side in a fresh interpreter; its result dict, or {"error": ...}."""
    spec_path, out = tmp / f"{side}.spec.json", tmp / f"{side}.result.json"
    spec_path.write_text(json.dumps(dict(spec, side=side, out=str(out))))
    s = spec["settings"]
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                              env=_worker_env(s["threads"], s["device"], side), capture_output=True, text=True,
                              timeout=timeout, cwd=tmp)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if proc.returncode != 0 or not out.exists():
        return {"error": f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-3000:]}"}
    result = json.loads(out.read_text())
    result["subprocess_wall_s"] = time.perf_counter() - started
    return result


def timed_steps(results: list[dict], warmup: int) -> list[dict]:
    """The per-step records after each round's warmup, all rounds together."""
    return [r for result in results for r in result["per_step"][warmup:]]


def cpu_medians(steps: list[dict]) -> dict:
    """Medians of the process CPU seconds per step, in generate, and the rest (step − generate)."""
    return {"cpu_step_s": statistics.median(r["cpu_step_s"] for r in steps),
            "cpu_generate_s": statistics.median(r["cpu_generate_s"] for r in steps),
            "cpu_rest_s": statistics.median(r["cpu_step_s"] - r["cpu_generate_s"] for r in steps)}


def summarise_ours(results: list[dict], warmup: int) -> dict:
    """Medians over the timed steps of every round of the trainer's own timings (seconds)."""
    steps = timed_steps(results, warmup)
    med = {k: statistics.median(r[k] for r in steps)
           for k in ("time/step", "time/generate", "time/reward", "time/logprobs", "time/train")}
    every = [r for result in results for r in result["per_step"]]
    return {"step_s": med["time/step"], "generate_s": med["time/generate"],
            "rest_s": statistics.median(r["time/step"] - r["time/generate"] for r in steps), **cpu_medians(steps),
            "reward_s": med["time/reward"], "ref_logprobs_s": med["time/logprobs"], "train_s": med["time/train"],
            "completion_tokens": {"mean": statistics.mean(r["response_length/mean"] for r in every),
                                  "max": max(r["response_length/max"] for r in every),
                                  "truncated_frac": min(r["response_length/truncated_frac"] for r in every)}}


def summarise_trl(results: list[dict], warmup: int) -> dict:
    steps = timed_steps(results, warmup)
    shapes = [x for result in results for x in result["generate_shapes"]]
    return {"step_s": statistics.median(r["step_s"] for r in steps),
            "generate_s": statistics.median(r["generate_s"] for r in steps),
            "rest_s": statistics.median(r["step_s"] - r["generate_s"] for r in steps), **cpu_medians(steps),
            "completion_tokens": {"min": min(x["new_tokens"] for x in shapes),
                                  "max": max(x["new_tokens"] for x in shapes)},
            "prompt_len": sorted({x["prompt_len"] for x in shapes})}


def check_same_work(ours: dict, trl: dict, s: Settings) -> list[str]:
    """Problems with "both sides generated exactly new_tokens per completion" (empty: none)."""
    problems = []
    c = ours["completion_tokens"]
    if not (c["mean"] == c["max"] == s.new_tokens and c["truncated_frac"] == 1.0):
        problems.append(f"ours: completions not all {s.new_tokens} tokens: {c}")
    c = trl["completion_tokens"]
    if not c["min"] == c["max"] == s.new_tokens:
        problems.append(f"trl: completions not all {s.new_tokens} tokens: {c}")
    if trl["prompt_len"] != [s.prompt_len]:
        problems.append(f"trl: prompts of {trl['prompt_len']} tokens, not {s.prompt_len}")
    return problems


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: str) -> dict:
    import torch

    def git_head() -> str | None:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() or None

    return {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or
            platform.machine(), "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
            "python": platform.python_version(), "r1_megatron": git_head(),
            **{pkg: _version(pkg) for pkg in ("torch", "transformers", "trl", "accelerate", "datasets",
                                              "megatron-core")}}


def run_size(s: Settings, size: str, timeout: float) -> dict:
    """Both sides on one model size: one checkpoint and prompt file, then `s.rounds` rounds of one subprocess per
    side, the order reversed in every other round (so slow drift of the machine's load hits both sides)."""
    raw: dict[str, list[dict]] = {"ours": [], "trl": []}
    with tempfile.TemporaryDirectory(prefix="bench_grpo_step_") as tmp_name:
        tmp = Path(tmp_name)
        hf_dir, prompts = tmp / "hf", tmp / "prompts.jsonl"
        write_checkpoint(hf_dir, SIZES[size], s.seed)
        write_prompts(prompts, s)
        for round_ in range(s.rounds):
            spec = {"settings": dataclasses.asdict(s), "hf_dir": str(hf_dir), "prompts": str(prompts),
                    "tmp": tmp_name, "recipe": ours_recipe(s, str(hf_dir), str(prompts), str(tmp / f"ours_{round_}"))}
            for side in ("ours", "trl") if round_ % 2 == 0 else ("trl", "ours"):
                result = run_worker_process(side, spec, tmp, timeout)
                if "error" in result:
                    raise RuntimeError(f"bench_grpo_step: {size}: the {side} worker failed: {result['error']}")
                raw[side].append(result)
    ours, trl = summarise_ours(raw["ours"], s.warmup), summarise_trl(raw["trl"], s.warmup)
    problems = check_same_work(ours, trl, s)
    if any(r["r1_megatron_imported"] for r in raw["trl"]):
        problems.append("the TRL worker imported r1_megatron: its timings are not independent")
    if problems:
        raise RuntimeError(f"bench_grpo_step: {size}: the two sides did different work: {problems}")
    return {"model": {**QWEN2, **SIZES[size]}, "ours": ours, "trl": trl,
            "ratios_ours_over_trl": {k: ours[k] / trl[k] for k in PHASES},
            "ours_recipe": spec["recipe"], "raw": raw}


def run(s: Settings, sizes: list[str], argv: list[str] | None, timeout: float) -> dict:
    if _version("trl") is None:
        raise SystemExit(f"bench_grpo_step: TRL is not installed; pip install -e '.[bench]' (trl=={TRL_VERSION})")
    env = environment(s.device)
    results = {size: run_size(s, size, timeout) for size in sizes}
    env["load_average_end"] = list(os.getloadavg())
    return {"benchmark": "grpo_step", "command": command_line(__file__, argv), "env": env,
            "settings": dataclasses.asdict(s), "sizes": results}


def print_table(payload: dict) -> None:
    s = payload["settings"]
    print(f"GRPO step, {s['prompts']} prompts x G {s['group_size']}, {s['new_tokens']} new tokens, {s['device']}, "
          f"{s['threads']} thread(s); median of {s['rounds']} x {s['steps']} steps (each after {s['warmup']} warmup)")
    print(f"{'size':>6} | {'phase':>9} | {'ours s':>8} | {'TRL s':>8} | {'ours/TRL':>8} | {'ours CPU s':>10} | "
          f"{'TRL CPU s':>9} | {'ours/TRL':>8}")
    for size, r in payload["sizes"].items():
        o, p, q = r["ours"], r["trl"], r["ratios_ours_over_trl"]
        for key in ("step", "generate", "rest"):
            wall, cpu = f"{key}_s", f"cpu_{key}_s"
            print(f"{size:>6} | {key:>9} | {o[wall]:>8.3f} | {p[wall]:>8.3f} | {q[wall]:>8.2f} | {o[cpu]:>10.3f} | "
                  f"{p[cpu]:>9.3f} | {q[cpu]:>8.2f}")
        print(f"{size:>6}   ours' rest (wall): reward {o['reward_s']:.3f} s, reference logprobs "
              f"{o['ref_logprobs_s']:.3f} s, train {o['train_s']:.3f} s")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CI size: " + json.dumps(SMOKE))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=None, help="default: tiny small "
                   "(--smoke: tiny)")
    for f in dataclasses.fields(Settings):
        if f.name != "device":
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None)
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per worker")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/grpo_step_DEVICE.json)")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    values = dict(SMOKE) if args.smoke else {}
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
                   if getattr(args, f.name) is not None})
    s = Settings(**values)
    for name in ("prompts", "new_tokens", "prompt_len", "steps", "rounds", "threads"):
        if getattr(s, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(s, name)}")
    if s.group_size < 2 or s.warmup < 0:
        raise SystemExit(f"--group-size must be >= 2 (GRPO) and --warmup >= 0, got {s.group_size}, {s.warmup}")
    return s


def main(argv: list[str] | None = None) -> dict | None:
    args = _parse(argv)
    if args.worker is not None:
        spec = json.loads(args.worker.read_text())
        result = (worker_ours if spec["side"] == "ours" else worker_trl)(spec)
        Path(spec["out"]).write_text(json.dumps(result))
        return None
    s = settings_from(args)
    sizes = args.sizes or (["tiny"] if args.smoke else list(SIZES))
    payload = run(s, sizes, argv, args.timeout)
    print_table(payload)
    write_payload(payload, args.out or RESULTS_DIR / f"grpo_step_{s.device}.json")
    return payload


if __name__ == "__main__":
    main()
