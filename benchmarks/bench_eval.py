"""Evaluation throughput of `r1-megatron eval` against lm-evaluation-harness (`lm-eval`, its `hf` model type:
transformers' `generate`), the same model, questions and sampling settings on both sides.

    python benchmarks/bench_eval.py                      # the committed CPU run (results/eval_cpu.json)
    python benchmarks/bench_eval.py --smoke --out X.json # CI size: 2 questions x k 2, 4 new tokens
    python benchmarks/bench_eval.py --device cuda --preset gpu-1.5b --out benchmarks/results/eval_<device>.json

The peer needs lm-eval: `pip install -e ".[bench]"` pins lm-eval==0.4.13, the version tested with transformers
5.24 and torch 2.13. Without it the script stops and says so.

Method.
- Same model: one HF directory written here by transformers' save_pretrained with random weights (a Qwen2; PRESETS:
  a tiny one on CPU, Qwen2.5-1.5B's shape for GPU, since nothing is downloaded there) and a byte-level tokenizer
  written for it (write_tokenizer): one token per UTF-8 byte, Qwen2's special tokens and a chat template. The
  tokenizer covers the model's whole vocabulary (ids the encoder never produces decode to filler text) and its EOS
  has id vocab_size, outside the output layer: neither side can sample it, so every sample is exactly
  max_new_tokens long and both sides do the same work (checked from each side's own token counts).
- Same questions: N arithmetic problems made deterministically from the seed (write_questions), in the
  math500-style JSONL layout ({"id", "problem", "answer"}); the instruction suffix is part of the problem text and
  our benchmark has no suffix and no think prefix, so the prompt is the chat template applied to the problem alone.
  lm-eval gets that prompt pre-rendered (the file's "prompt" field, `doc_to_text: "{{prompt}}"`, no lm-eval chat
  template): both sides see the same prompt text, hence the same prompt tokens (no BOS: the tokenizer has none).
  When our side ran, the prompts of its samples.jsonl are compared with those lm-eval logged ("prompts_match").
- Same sampling: k samples per question (lm-eval `repeats: k`), temperature 0.6, top-p 0.95, top-k off (lm-eval
  passes generation_kwargs to transformers' generate, whose own default would be top-k 50), max_new_tokens M,
  no stop string but EOS. Scoring is not the point: lm-eval scores the first sample with its local exact_match,
  ours with the math scorer.
- Isolation: each side runs in its own subprocess, at --threads torch threads (OMP_NUM_THREADS too), never both
  at once. The lm-eval worker never imports r1_megatron (reported as `r1_megatron_imported`) and runs without the
  repository root on sys.path (its top-level kernels/ folder would shadow the Hugging Face `kernels` package that
  transformers probes for). Offline: HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1, the dataset is `json` with
  data_files, the datasets cache in the temporary directory.
- Timing (wall clock; CUDA synchronised around lm-eval's generate calls):
  lm-eval: `wall_s` is lm_eval.simple_evaluate on an already built HFLM (model load, `load_s`, excluded) and an
  already indexed TaskManager (`task_index_s`, excluded): dataset loading, request building, every generate call,
  filters and metrics (bootstrap_iters=0). `generate_s` is the sum of its HFLM._model_generate calls alone.
  Generated tokens are counted from those calls' outputs (per row up to and including the first EOS, else all
  new positions): the texts in lm-eval's logged samples do not re-tokenize to the sampled ids for random weights.
  ours: the `throughput` of OUT/results.json as `r1-megatron eval` reports it (wall_s: its evaluation loop after
  the model is loaded, reward-worker start-up and scoring included; generate_s: generation alone); generated
  tokens are also counted from
  OUT/samples.jsonl's token_ids. Both sides' whole subprocess time (start-up, model load included) is recorded
  as `process_wall_s`.
  questions_per_s = N / wall_s, generated_tokens_per_s = tokens / wall_s; ratios are ours / lm-eval (> 1: ours
  is faster).
- Goals (measured, not asserted; GOALS): carried over from the engine's generation goals since evaluation is
  generation-bound: ours' generated tokens/s >= 2x lm-eval's on GPU (1.5B scale), >= 1.5x on CPU. "goal.met" is
  null when our side failed (its reason is in ours.reason).

Prints a table and writes one JSON object {"benchmark", "command", "env", "settings", "model", "lm_eval", "ours",
"ratios_ours_over_lm_eval", "checks", "goal"}.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import command_line, package_version, set_threads, slug, write_payload  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_DIR = HERE / "results"
LM_EVAL_VERSION = "0.4.13"  # the pinned peer (setup.py extra "bench")
BENCHMARK = "bench_arith"  # the benchmark's name on both sides (our YAML key, the lm-eval task name)

PAD, TURN = "<|endoftext|>", "<|im_start|>"  # Qwen2's names: pad, start of a turn
EOS = "<|im_end|>"
# Qwen2's template except that a turn ends with a newline, not <|im_end|>: EOS never appears in a prompt, so it can
# sit outside the model's output layer (unsampleable) without the prompt needing its embedding
CHAT_TEMPLATE = ("{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                 "'\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."  # R1's math instruction

TINY_QWEN2 = dict(vocab_size=384, hidden_size=96, intermediate_size=120, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=False)
QWEN25_15B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                  tie_word_embeddings=True)  # Qwen2.5-1.5B's shape (the R1-Distill-Qwen-1.5B student)
QWEN2_COMMON = dict(rope_parameters=dict(rope_type="default", rope_theta=1000000.0), rms_norm_eps=1e-6,
                    bos_token_id=None, eos_token_id=None, pad_token_id=0)
PRESETS = {  # model, dtype and work per run; --questions/--k/--max-new-tokens/--batch-size override
    "cpu-tiny": dict(model=TINY_QWEN2, dtype="fp32", questions=32, k=4, max_new_tokens=64, batch_size=32),
    "smoke": dict(model=TINY_QWEN2, dtype="fp32", questions=2, k=2, max_new_tokens=4, batch_size=4),
    "gpu-1.5b": dict(model=QWEN25_15B, dtype="bf16", questions=64, k=4, max_new_tokens=256, batch_size=64),
}
LM_EVAL_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
# generated tokens/s of ours over lm-eval's (the engine issue's decode goals: evaluation is generation-bound)
GOALS = {"cuda": dict(generated_tokens_per_s_vs_lm_eval=2.0), "cpu": dict(generated_tokens_per_s_vs_lm_eval=1.5)}


@dataclasses.dataclass
class Settings:
    """Everything both sides are given."""

    preset: str
    questions: int
    k: int
    max_new_tokens: int
    batch_size: int  # lm-eval's generate batch (rows per call); ours batches as its engine does
    dtype: str
    device: str
    threads: int
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 0


# ----------------------------------------------------------------------------------------------- the shared inputs


def write_tokenizer(directory: Path, model_vocab: int) -> None:
    """A byte-level tokenizer for a model of `model_vocab` output ids: id 0 PAD, 1 TURN, 2..257 the 256 byte
    symbols (no merges: one token per byte), fillers <|fill{i}|> up to model_vocab - 1 (decodable, never produced
    by encoding), and EOS = model_vocab (outside the output layer, so it is never sampled)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    symbols = [PAD, TURN, *sorted(pre_tokenizers.ByteLevel.alphabet())]
    if model_vocab < len(symbols):
        raise ValueError(f"write_tokenizer: model_vocab {model_vocab} < {len(symbols)} (specials + 256 bytes)")
    vocab = {t: i for i, t in enumerate(symbols)}
    vocab.update({f"<|fill{i}|>": i for i in range(len(symbols), model_vocab)})
    vocab[EOS] = model_vocab
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in (PAD, TURN, EOS)])
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "pad_token": PAD,
              "chat_template": CHAT_TEMPLATE, "model_max_length": 1 << 20, "clean_up_tokenization_spaces": False}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_checkpoint(directory: Path, model: dict, dtype: str, seed: int, device: str) -> None:
    """A random Qwen2 (transformers' init) in `dtype` with write_tokenizer's tokenizer (EOS = vocab_size: the
    model config names no EOS, as a config may only name ids inside the vocabulary)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(**QWEN2_COMMON, **model)
    with torch.device(device):  # initialising 1.5B parameters is much faster on the GPU
        hf = Qwen2ForCausalLM(config)
    hf.to({"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]).save_pretrained(directory)
    write_tokenizer(directory, model["vocab_size"])
    del hf
    if device == "cuda":
        torch.cuda.empty_cache()  # this process stays alive while the sides run: hand its memory back


def render_prompt(problem: str) -> str:
    """The chat template applied to one user message, generation prompt added (what both sides feed)."""
    return f"{TURN}user\n{problem}\n{TURN}assistant\n"


def write_questions(path: Path, n: int, seed: int) -> list[dict]:
    """N distinct "What is a + b?" problems (a, b in 10..99 from the seed), one JSON line each: the math500-style
    {"id", "problem", "answer"} plus the rendered "prompt" that lm-eval's doc_to_text reads."""
    if n > 90 * 90:
        raise ValueError(f"write_questions: {n} questions; there are only {90 * 90} distinct pairs")
    rng = random.Random(seed)
    pairs: list[tuple[int, int]] = []
    while len(pairs) < n:
        pair = (rng.randint(10, 99), rng.randint(10, 99))
        if pair not in pairs:
            pairs.append(pair)
    records = []
    for i, (a, b) in enumerate(pairs):
        problem = f"What is {a} + {b}? {SUFFIX}"
        records.append({"id": f"arith-{i}", "problem": problem, "answer": str(a + b), "prompt": render_prompt(problem)})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def ours_benchmark_yaml(path: Path, questions: Path, s: Settings) -> dict:
    """Our side's benchmark file (the design's `benchmarks:` mapping; the integrator may adjust the keys here)."""
    import yaml

    spec = {"benchmarks": {BENCHMARK: {
        "path": str(questions), "scorer": "math", "template": "chat",
        "fields": {"question": "problem", "answer": "answer", "id": "id"},
        "suffix": "", "think_prefix": False, "k": s.k, "pass_ks": [1], "cons_k": s.k, "limit": None}}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec


def lm_eval_task_yaml(directory: Path, questions: Path, s: Settings) -> dict:
    """The lm-eval custom task (directory goes to TaskManager(include_path=...)): generate_until on the
    pre-rendered prompt, k repeats, our sampling settings, a local metric (no network)."""
    import yaml

    task = {"task": BENCHMARK, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(questions)}},
            "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{prompt}}",
            "doc_to_target": "{{answer}}", "target_delimiter": "", "repeats": s.k,
            "generation_kwargs": {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p, "top_k": 0,
                                  "max_gen_toks": s.max_new_tokens, "until": []},
            "filter_list": [{"name": "first", "filter": [{"function": "take_first"}]}],
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1}}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{BENCHMARK}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return task


def count_generated(rows: list[list[int]], eos_id: int) -> int:
    """Tokens generated over rows of new-token ids: per row up to and including its first EOS, else the whole row
    (transformers pads a finished row after its EOS)."""
    return sum(row.index(eos_id) + 1 if eos_id in row else len(row) for row in rows)


# ----------------------------------------------------------------------------------------------- lm-eval worker


def time_generate_calls(lm, device: str) -> list[dict]:
    """Wrap lm._model_generate (HFLM's call of transformers' generate) so every call appends its seconds (CUDA
    synchronised), rows, padded prompt length, new tokens (count_generated) and sampling kwargs to the list."""
    import torch

    calls: list[dict] = []
    generate = lm._model_generate

    def timed(context, max_length, stop, **kwargs):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = generate(context, max_length, stop, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
        calls.append({"s": time.perf_counter() - start, "rows": context.shape[0], "prompt_len": context.shape[1],
                      "tokens": count_generated(out[:, context.shape[1]:].tolist(), lm.eot_token_id),
                      "kwargs": {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool))}})
        return out

    lm._model_generate = timed
    return calls


def worker_lm_eval(spec: dict) -> dict:
    """lm_eval.simple_evaluate(model=HFLM, tasks=[BENCHMARK]) with HFLM built and the tasks indexed beforehand (both
    timed apart), every generate call timed. Imports no r1_megatron."""
    s = Settings(**spec["settings"])
    set_threads(s.threads)
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    lm = HFLM(pretrained=spec["hf_dir"], dtype=LM_EVAL_DTYPES[s.dtype], device=s.device, batch_size=s.batch_size)
    t1 = time.perf_counter()
    tasks = TaskManager(include_path=spec["task_dir"])
    t2 = time.perf_counter()
    calls = time_generate_calls(lm, s.device)
    results = lm_eval.simple_evaluate(model=lm, tasks=[BENCHMARK], task_manager=tasks, log_samples=True,
                                      bootstrap_iters=0, random_seed=s.seed, numpy_random_seed=s.seed,
                                      torch_random_seed=s.seed)
    samples = results["samples"][BENCHMARK]
    return {"load_s": t1 - t0, "task_index_s": t2 - t1, "wall_s": time.perf_counter() - t2, "calls": calls,
            "questions": len(samples), "samples_per_question": sorted({len(x["resps"][0]) for x in samples}),
            "prompts": {x["doc"]["id"]: x["arguments"][0][0] for x in samples},
            "metrics": results["results"][BENCHMARK], "lm_eval": importlib.metadata.version("lm_eval"),
            "r1_megatron_imported": any(m.split(".")[0] == "r1_megatron" for m in sys.modules)}


def summarise_lm_eval(result: dict) -> dict:
    """Throughput of the lm-eval side from its worker's record (see the module docstring for what is timed)."""
    tokens = sum(c["tokens"] for c in result["calls"])
    generate_s = sum(c["s"] for c in result["calls"])
    return {"available": True, "questions": result["questions"], "samples": sum(c["rows"] for c in result["calls"]),
            "generated_tokens": tokens, "wall_s": result["wall_s"], "generate_s": generate_s,
            "questions_per_s": result["questions"] / result["wall_s"],
            "generated_tokens_per_s": tokens / result["wall_s"],
            "generate_tokens_per_s": tokens / generate_s, "generate_kwargs": result["calls"][0]["kwargs"],
            "prompt_lens": sorted({c["prompt_len"] for c in result["calls"]}), "load_s": result["load_s"],
            "task_index_s": result["task_index_s"], "generate_calls": len(result["calls"]),
            "process_wall_s": result["process_wall_s"], "samples_per_question": result["samples_per_question"],
            "metrics": result["metrics"], "r1_megatron_imported": result["r1_megatron_imported"]}


# ----------------------------------------------------------------------------------------------- ours


def ours_command(hf_dir: Path, bench_yaml: Path, out: Path, s: Settings, extra: list[str]) -> list[str]:
    """`r1-megatron eval` on the benchmark file, in the model's dtype, decoding as many sequences together as
    lm-eval's batch holds, one scoring process (as lm-eval scores in-process), no progress bar."""
    return [sys.executable, "-m", "r1_megatron", "eval", "--model", str(hf_dir), "--benchmarks", BENCHMARK,
            "--out", str(out), f"benchmarks.file={bench_yaml}", f"sampling.k={s.k}",
            f"sampling.max_new_tokens={s.max_new_tokens}", f"sampling.temperature={s.temperature}",
            f"sampling.top_p={s.top_p}", "sampling.top_k=0", f"seed={s.seed}", f"model.dtype={s.dtype}",
            f"engine.max_batch_size={s.batch_size}", "rewards.num_workers=1", "progress=false", *extra]


def run_ours(cmd: list[str], out: Path, s: Settings, tmp: Path, timeout: float) -> dict:
    """Our side in a subprocess; its results.json's throughput and samples.jsonl's token counts and prompts, or
    {"available": False, "reason": ...} when the command is missing or fails."""
    env = worker_env(s, "ours", tmp)
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp)
    except subprocess.TimeoutExpired:
        return {"available": False, "command": cmd, "reason": f"timed out after {timeout} s"}
    process_wall = time.perf_counter() - started
    if proc.returncode != 0 or not (out / "results.json").exists():
        return {"available": False, "command": cmd,
                "reason": f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}"}
    return {"available": True, "command": cmd, "process_wall_s": process_wall, **read_ours(out)}


def read_ours(out: Path) -> dict:
    """Our figures from `r1-megatron eval`'s OUT directory (the design's layout): results.json's throughput
    {questions_per_s, generated_tokens_per_s, wall_s}; from samples.jsonl the questions, samples, generated tokens
    (len(token_ids) summed) and the prompt of each record id; results.json itself under "results"."""
    results = json.loads((out / "results.json").read_text())
    from r1_megatron.evaluation.sample_store import read_samples

    _, samples = read_samples(out / "samples.jsonl")  # the first line is the settings header
    throughput = results["throughput"]
    return {**{k: throughput[k] for k in ("questions_per_s", "generated_tokens_per_s", "wall_s")},
            "questions": len({(x["benchmark"], x["question"]) for x in samples}), "samples": len(samples),
            "generated_tokens": sum(len(x["token_ids"]) for x in samples),
            "prompts": {x["id"]: x["prompt"] for x in samples}, "results": results}


# ----------------------------------------------------------------------------------------------- orchestration


def worker_env(s: Settings, side: str, tmp: Path) -> dict:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(s.threads)
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1",
               HF_DATASETS_CACHE=str(tmp / "hf_datasets"), TRANSFORMERS_VERBOSITY="error")
    if s.device == "cpu":  # the PyTorch kernels: under TRITON_INTERPRET=1 Triton's interpreter would dominate
        env.setdefault("R1_MEGATRON_KERNELS", "torch")
    # the repository root only on our side: there its kernels/ folder is a top-level `kernels`, which transformers
    # probes for (the Hugging Face kernels package) and would import, r1_megatron with it
    paths = [str(REPO)] if side == "ours" else []
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_lm_eval(spec: dict, s: Settings, tmp: Path, timeout: float) -> dict:
    """The lm-eval worker in a fresh interpreter (this script with --worker SPEC)."""
    spec_path, out = tmp / "lm_eval.spec.json", tmp / "lm_eval.result.json"
    spec_path.write_text(json.dumps(dict(spec, out=str(out))))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                          env=worker_env(s, "lm_eval", tmp), capture_output=True, text=True, timeout=timeout,
                          cwd=tmp)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"bench_eval: the lm-eval worker exited {proc.returncode}: "
                           f"{(proc.stdout + proc.stderr)[-3000:]}")
    return dict(json.loads(out.read_text()), process_wall_s=time.perf_counter() - started)


def checks(lm: dict, ours: dict, s: Settings, lm_prompts: dict, expected_prompts: dict) -> dict:
    """Same-work checks: every sample exactly max_new_tokens on each side that ran, k samples per question, the
    prompts lm-eval fed (and ours, when it ran) equal to the rendered ones."""
    expected_tokens = s.questions * s.k * s.max_new_tokens
    out = {"expected_generated_tokens": expected_tokens,
           "lm_eval_tokens_ok": lm["generated_tokens"] == expected_tokens and lm["samples"] == s.questions * s.k,
           "lm_eval_k_ok": lm["samples_per_question"] == [s.k],
           "lm_eval_prompts_ok": lm_prompts == expected_prompts, "ours_tokens_ok": None, "prompts_match": None}
    if ours["available"]:
        out["ours_tokens_ok"] = ours["generated_tokens"] == expected_tokens and ours["samples"] == s.questions * s.k
        out["prompts_match"] = ours["prompts"] == lm_prompts
    return out


def goal_verdict(ratios: dict | None, device: str) -> dict:
    goal = GOALS["cuda" if device == "cuda" else "cpu"]
    want = goal["generated_tokens_per_s_vs_lm_eval"]
    met = None if ratios is None else ratios["generated_tokens_per_s"] >= want
    return {"statement": f"{device}: ours >= {want}x lm-eval (hf) generated tokens/s", **goal, "met": met}


def environment(device: str) -> dict:
    import torch

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or
            platform.machine(), "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
            "python": platform.python_version(), "r1_megatron": head.stdout.strip() or None,
            **{pkg: package_version(pkg) for pkg in ("torch", "transformers", "lm_eval", "datasets", "megatron-core")}}


def run(s: Settings, argv: list[str] | None, timeout: float, extra: list[str]) -> dict:
    if importlib.util.find_spec("lm_eval") is None:
        raise SystemExit(f"bench_eval: lm-eval is not installed; pip install -e '.[bench]' (lm-eval=={LM_EVAL_VERSION})")
    env = environment(s.device)
    model = PRESETS[s.preset]["model"]
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp_name:
        tmp = Path(tmp_name)
        hf_dir, questions = tmp / "hf", tmp / "questions.jsonl"
        write_checkpoint(hf_dir, model, s.dtype, s.seed, s.device)
        records = write_questions(questions, s.questions, s.seed)
        ours_benchmark_yaml(tmp / "benchmarks.yaml", questions, s)
        lm_eval_task_yaml(tmp / "lm_eval_tasks", questions, s)
        raw = run_lm_eval({"settings": dataclasses.asdict(s), "hf_dir": str(hf_dir),
                           "task_dir": str(tmp / "lm_eval_tasks")}, s, tmp, timeout)
        cmd = ours_command(hf_dir, tmp / "benchmarks.yaml", tmp / "ours", s, extra)
        ours = run_ours(cmd, tmp / "ours", s, tmp, timeout)
    ours = json.loads(json.dumps(ours).replace(json.dumps(sys.executable)[1:-1], "python")
                      .replace(json.dumps(str(tmp))[1:-1], "TMP"))  # the JSON names no path of this machine
    return compare(summarise_lm_eval(raw), ours, s, raw["prompts"], records, argv, env)


def compare(lm: dict, ours: dict, s: Settings, lm_prompts: dict, records: list[dict], argv: list[str] | None,
            env: dict) -> dict:
    """The report: both sides, the ratios ours / lm-eval (None while ours is unavailable), checks and goal."""
    model = PRESETS[s.preset]["model"]
    checked = checks(lm, ours, s, lm_prompts, {r["id"]: r["prompt"] for r in records})
    ratios = None
    if ours["available"]:
        ratios = {k: ours[k] / lm[k] for k in ("questions_per_s", "generated_tokens_per_s")}
        ratios["process_wall_s"] = ours["process_wall_s"] / lm["process_wall_s"]
    ours.pop("prompts", None)
    env["load_average_end"] = list(os.getloadavg())
    return {"benchmark": "eval", "command": command_line(__file__, argv), "env": env,
            "settings": dataclasses.asdict(s), "model": {"source": "random weights (transformers init)",
                                                         "config": {**QWEN2_COMMON, **model}, "dtype": s.dtype},
            "lm_eval": lm, "ours": ours, "ratios_ours_over_lm_eval": ratios, "checks": checked,
            "goal": goal_verdict(ratios, s.device)}


def print_table(payload: dict) -> None:
    s, lm, ours = payload["settings"], payload["lm_eval"], payload["ours"]
    print(f"eval, preset {s['preset']}: {s['questions']} questions x k {s['k']}, {s['max_new_tokens']} new tokens, "
          f"{s['device']} {s['dtype']}, {s['threads']} thread(s), lm-eval batch {s['batch_size']}")
    print(f"{'side':>8} | {'questions/s':>11} | {'gen tok/s':>9} | {'wall s':>7} | {'tokens':>7} | {'process s':>9}")
    rows = [("lm-eval", lm)] + ([("ours", ours)] if ours["available"] else [])
    for name, r in rows:
        print(f"{name:>8} | {r['questions_per_s']:>11.3f} | {r['generated_tokens_per_s']:>9.1f} | {r['wall_s']:>7.2f} | "
              f"{r['generated_tokens']:>7} | {r['process_wall_s']:>9.2f}")
    print(f"lm-eval: model load {lm['load_s']:.2f} s and task index {lm['task_index_s']:.2f} s excluded; generate "
          f"calls {lm['generate_s']:.2f} s of the {lm['wall_s']:.2f} s ({lm['generate_tokens_per_s']:.1f} tok/s)")
    if not ours["available"]:
        print(f"ours: unavailable: {ours['reason']}")
    print(f"checks: {payload['checks']}")
    print(f"goal: {payload['goal']['statement']}: met={payload['goal']['met']}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="the 'smoke' preset: " + json.dumps(
        {k: v for k, v in PRESETS["smoke"].items() if k != "model"}))
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="default: cpu-tiny on CPU, gpu-1.5b on CUDA (--smoke: smoke)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    for name in ("questions", "k", "max_new_tokens", "batch_size"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, help="override the preset's")
    p.add_argument("--dtype", choices=sorted(LM_EVAL_DTYPES), default=None, help="override the preset's")
    p.add_argument("--threads", type=int, default=None, help="torch threads per side (default: 1 on CPU, all on GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ours-override", action="append", default=[], metavar="KEY=VALUE",
                   help="one more KEY=VALUE for `r1-megatron eval` (repeatable)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per side")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/eval_DEVICE.json)")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    preset = args.preset or ("smoke" if args.smoke else "cpu-tiny" if args.device == "cpu" else "gpu-1.5b")
    values = {k: v for k, v in PRESETS[preset].items() if k != "model"}
    values.update({k: getattr(args, k) for k in ("questions", "k", "max_new_tokens", "batch_size", "dtype")
                   if getattr(args, k) is not None})
    threads = args.threads or (1 if args.device == "cpu" else os.cpu_count())
    s = Settings(preset=preset, device=args.device, threads=threads, seed=args.seed, **values)
    for name in ("questions", "k", "max_new_tokens", "batch_size", "threads"):
        if getattr(s, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(s, name)}")
    return s


def main(argv: list[str] | None = None) -> dict | None:
    args = _parse(argv)
    if args.worker is not None:
        spec = json.loads(args.worker.read_text())
        Path(spec["out"]).write_text(json.dumps(worker_lm_eval(spec)))
        return None
    s = settings_from(args)
    if s.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("bench_eval: --device cuda: CUDA is not available here (use --device cpu)")
    payload = run(s, argv, args.timeout, args.ours_override)
    print_table(payload)
    write_payload(payload, args.out or RESULTS_DIR / f"eval_{s.device if s.device == 'cpu' else slug(payload['env']['device'])}.json")
    return payload


if __name__ == "__main__":
    main()
