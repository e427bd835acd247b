"""Greedy generation speed of r1_megatron's Engine against transformers' `generate`, on one HF checkpoint.

    python benchmarks/bench_generate.py                     # GPU: Qwen2-0.5B-like random bf16 model,
                                                            #   batch 1/8/32/64, prompt 128, 128 new tokens
    python benchmarks/bench_generate.py --device cpu        # CPU (or --tiny): tiny Qwen2 fp32, batch 1/4,
                                                            #   prompt 8, 4 new tokens (a smoke run, seconds)
    python benchmarks/bench_generate.py --arch deepseek-v3  # a random DeepseekV3ForCausalLM (MLA + MoE) instead
    python benchmarks/bench_generate.py --kv-lengths 64 512 2048 --batch-sizes 8 --new-tokens 8
                                                            # decode ms/step as the context grows
    python benchmarks/bench_generate.py --preset tiny-dense tiny-moe   # + KV bytes/token of those presets
    python benchmarks/bench_generate.py --hf-dir DIR        # a real HF checkpoint instead of random weights
    python benchmarks/bench_generate.py --out report.json   # write the JSON here (GPU default: benchmarks/results/)

Method.
- Same weights: one HF checkpoint directory (random weights written by transformers' save_pretrained, or
  --hf-dir) is loaded by both sides: `AutoModelForCausalLM.from_pretrained(dir, dtype=...)` (default attention,
  DynamicCache: `generate` as people call it) and `r1_megatron.models.load_hf(dir, dtype=...)` in a
  single-process layout. --arch picks the random model: Qwen2 (TINY_QWEN2 / QWEN2_15B_LIKE) or DeepSeek-V3
  (TINY_DSV3 / SMALL_DSV3: MLA, a dense first layer, shared + routed experts, group-limited routing).
- Separate processes: transformers runs in a clean subprocess of this script that never imports r1_megatron (its
  report says so: `hf_process.r1_megatron_imported`), so nothing r1_megatron patches or sets (the CPU layer over
  Megatron, kernel selection) touches its timings; it gets the checkpoint directory, the prompts (a JSON file) and
  the parent's torch thread count. Ours runs in this process afterwards, never at the same time.
- Same work: B random prompts of exactly P tokens (no padding), greedy, exactly N new tokens on both sides:
  ours has no eos_token_ids and max_new_tokens=N; transformers gets do_sample=False and
  min_new_tokens=max_new_tokens=N, so no EOS can end a row early.
- Prefill/decode split (the same for both): t_1 = time of a whole generate call with 1 new token (prefill of
  B·P tokens + sampling one token), t_N = the same call with N new tokens. decode ms/step = (t_N − t_1)/(N − 1)
  (the N − 1 further one-token forwards, their sampling and host work); prefill tokens/s = B·P / t_1 (the first
  token's sampling included); decode tokens/s = B / decode step. Each time is the median of --repeats calls
  after --warmup untimed ones, wall time around the whole call (CUDA events on GPU), host overhead included.
  Our calls run inside one `engine.generating()` block, so the KV cache is allocated by the warmup and not timed.
- --kv-lengths L...: the rows are (batch, prompt of L tokens) for each given batch and L instead of the batch
  sweep; `kv_growth` lists each row's decode ms/step and its ratio to the shortest context's at that batch, for
  both sides: how per-step time grows with the context the decode attends over.
- KV bytes per token (`kv_bytes_per_token`): the engine's allocated paged cache, KVCache.nbytes(), over the
  positions it holds (num_blocks × block_size); for MLA the compressed latent + rope key (the default
  `CacheConfig(mla_latent=True)`). --preset NAME...: the same figure for built-in presets (r1_megatron.models.preset, random weights from
  build_model, one short generate to allocate the cache), in `kv_bytes_by_preset`; every preset's bf16 figure at
  TP 1 and 8, computed with the engine's own sizing function, in `kv_bytes_all_presets`.
- Decode memory-bandwidth floor: bytes read per decode step = parameter bytes (each unique parameter of this
  rank once; the input embedding table only when it is tied to the output layer, since a lookup reads B rows)
  + B × mean context × KV bytes per token; mean context = P + N/2 (decode step k = 1..N−1 attends over P + k
  keys). floor_ms = bytes / copy bandwidth measured on the same device (bench_common.copy_bandwidth);
  floor_fraction = floor_ms / our decode ms per step (hf_floor_fraction likewise). For MoE checkpoints the
  parameter term counts every expert. On CPU the floor is reported too, labelled with the device, but means
  little for models that fit in cache.
- Sanity: token_agreement = fraction of the B×N positions where both greedy outputs agree; prefix_agreement =
  mean over rows of the agreeing prefix length / N. With bf16 random weights a near-tie can flip one argmax and
  the rows diverge after it; the tiny fp32 model agrees exactly.
- Goals (measured here, not asserted; GOALS): GPU, 1.5B-scale model: decode_speedup_vs_hf >= 2 at every batch
  >= 32 and floor_fraction >= 0.6 at batch 64; CPU, tiny models: decode_speedup_vs_hf >= 1.5 at batch >= 32.
  "goal.met" says whether this run met its device's goal (null in --kv-lengths mode or without a batch >= 32 row).

Prints a table and one JSON object {"benchmark", "env", "model", "copy_bandwidth_GBps", "results", "goal", "mode",
"kv_growth", "kv_bytes_by_preset", "kv_bytes_all_presets", "hf_process"}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS_DIR, command_line, copy_bandwidth, environment, slug, time_ms  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GPU_DEFAULTS = dict(batch_sizes=[1, 8, 32, 64], prompt_len=128, new_tokens=128, repeats=3, warmup=1, dtype="bf16")
CPU_DEFAULTS = dict(batch_sizes=[1, 4], prompt_len=8, new_tokens=4, repeats=3, warmup=1, dtype="fp32")
QWEN2_15B_LIKE = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                      num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                      rope_parameters=dict(rope_type="default", rope_theta=1000000.0), rms_norm_eps=1e-6,
                      tie_word_embeddings=True)  # Qwen2.5-1.5B's shape (the R1-Distill-Qwen-1.5B student)
TINY_QWEN2 = dict(vocab_size=150, hidden_size=96, intermediate_size=120, num_hidden_layers=2, num_attention_heads=6,
                  num_key_value_heads=2, max_position_embeddings=128,
                  rope_parameters=dict(rope_type="default", rope_theta=50000.0), rms_norm_eps=1e-6,
                  tie_word_embeddings=False)
# tests/models/hf_fixtures.py's tiny DeepSeek-V3 (the logits-parity model), with plain RoPE
TINY_DSV3 = dict(vocab_size=160, hidden_size=96, intermediate_size=112, moe_intermediate_size=40, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8,
                 num_experts_per_tok=2, n_group=4, topk_group=2, routed_scaling_factor=2.5, first_k_dense_replace=1,
                 kv_lora_rank=24, q_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=20,
                 max_position_embeddings=128, rope_parameters=dict(rope_type="default", rope_theta=10000.0),
                 rms_norm_eps=1e-6, num_nextn_predict_layers=0, tie_word_embeddings=False)
# GPU: a DeepSeek-V3 shape of ~0.34B parameters (every ratio as in the 671B model's config, scaled down)
SMALL_DSV3 = dict(TINY_DSV3, vocab_size=32000, hidden_size=1024, intermediate_size=2816, moe_intermediate_size=352,
                  num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16, n_routed_experts=32,
                  num_experts_per_tok=4, kv_lora_rank=256, q_lora_rank=512, qk_nope_head_dim=64,
                  qk_rope_head_dim=32, v_head_dim=64, max_position_embeddings=4096)
ARCHS = {"qwen2": {"small": TINY_QWEN2, "large": QWEN2_15B_LIKE},
         "deepseek-v3": {"small": TINY_DSV3, "large": SMALL_DSV3}}
# the engine issue's goals, per device: decode speed-up over transformers at every batch >= min_batch, and on GPU
# the fraction of the memory-bandwidth floor at batch floor_batch (a 1.5B-scale model)
GOALS = {"cuda": dict(min_batch=32, decode_speedup_vs_hf=2.0, floor_batch=64, floor_fraction=0.6),
         "cpu": dict(min_batch=32, decode_speedup_vs_hf=1.5)}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny model and CPU shapes, also on a GPU")
    p.add_argument("--arch", choices=sorted(ARCHS), default="qwen2", help="the random model's architecture")
    p.add_argument("--hf-dir", type=Path, default=None, help="benchmark this HF checkpoint (default: random weights)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    p.add_argument("--prompt-len", type=int, default=None)
    p.add_argument("--kv-lengths", type=int, nargs="+", default=None,
                   help="context-growth mode: one row per batch size and prompt length L (instead of --prompt-len)")
    p.add_argument("--new-tokens", type=int, default=None, help=">= 2: decode time is (t_N - t_1) / (N - 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    p.add_argument("--preset", nargs="+", default=[], metavar="NAME",
                   help="also measure the KV bytes per token of these r1_megatron presets (random weights)")
    p.add_argument("--seed", type=int, default=0, help="random weights and prompts")
    p.add_argument("--hf-timeout", type=float, default=3600.0, help="seconds for the transformers subprocess")
    p.add_argument("--out", type=Path, default=None, help="JSON path (GPU default: benchmarks/results/...)")
    p.add_argument("--hf-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.hf_worker is not None:
        return args
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here (use --device cpu)")
    small = args.tiny or args.device == "cpu"
    for name, value in (CPU_DEFAULTS if small else GPU_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.prompt_lens = args.kv_lengths or [args.prompt_len]
    needed = max(args.prompt_lens) + args.new_tokens
    base = ARCHS[args.arch]["small" if small else "large"]
    args.model_kwargs = dict(base, max_position_embeddings=max(base["max_position_embeddings"], needed))
    for name, low in (("new_tokens", 2), ("repeats", 1), ("warmup", 0)):
        if getattr(args, name) < low:
            p.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if min(args.prompt_lens) < 1:
        p.error(f"--prompt-len / --kv-lengths must be >= 1, got {args.prompt_lens}")
    if min(args.batch_sizes) < 1:
        p.error(f"--batch-sizes must all be >= 1, got {args.batch_sizes}")
    return args


# ----------------------------------------------------------------------------------------------- the math


def split_times(t1_ms: float, tN_ms: float, batch: int, prompt_len: int, new_tokens: int) -> dict:
    """Prefill and decode rates from two whole-call times.

    t1_ms: generate with 1 new token (prefill + one sample); tN_ms: with N = new_tokens.
    decode_ms_per_step = (tN − t1)/(N − 1); prefill_tokens_per_s = B·P / t1; decode_tokens_per_s = B / step.
    """
    step_ms = (tN_ms - t1_ms) / (new_tokens - 1)
    return {"t1_ms": t1_ms, "tN_ms": tN_ms, "prefill_tokens_per_s": batch * prompt_len / (t1_ms / 1e3),
            "decode_ms_per_step": step_ms, "decode_tokens_per_s": batch / (step_ms / 1e3)}


def decode_floor_ms(param_bytes: int, kv_bytes_per_token: float, batch: int, mean_context: float,
                    bandwidth_Bps: float) -> float:
    """Bandwidth floor of one decode step: (param_bytes + B·mean_context·kv_bytes_per_token) / bandwidth, in ms."""
    return (param_bytes + batch * mean_context * kv_bytes_per_token) / bandwidth_Bps * 1e3


def agreement(ours_BN: list[list[int]], theirs_BN: list[list[int]]) -> tuple[float, float]:
    """(fraction of equal positions, mean over rows of the equal-prefix length / N); rows are N tokens each."""
    equal, prefix = 0, 0.0
    for a, b in zip(ours_BN, theirs_BN, strict=True):
        if len(a) != len(b):
            raise ValueError(f"agreement: rows of different lengths {len(a)} and {len(b)}")
        same = [x == y for x, y in zip(a, b)]
        equal += sum(same)
        prefix += (same.index(False) if False in same else len(same)) / len(same)
    return equal / sum(map(len, ours_BN)), prefix / len(ours_BN)


def context_growth(rows: list[dict]) -> list[dict]:
    """Per row: decode ms/step of both sides and its ratio to the shortest prompt's row of the same batch
    (x_shortest = ms(P) / ms(P_min)); rows ordered by batch, then prompt length."""
    out = []
    for row in sorted(rows, key=lambda r: (r["batch"], r["prompt_len"])):
        first = min((r for r in rows if r["batch"] == row["batch"]), key=lambda r: r["prompt_len"])
        entry = {"batch": row["batch"], "context_len": row["prompt_len"]}
        for side in ("ours", "hf"):
            ms = row[f"{side}_decode_ms_per_step"]
            entry.update({f"{side}_decode_ms_per_step": ms, f"{side}_x_shortest": ms / first[f"{side}_decode_ms_per_step"]})
        out.append({**entry, "decode_speedup_vs_hf": row["decode_speedup_vs_hf"]})
    return out


def parameter_bytes(model) -> int:
    """Bytes of weights one decode step reads: every unique parameter once, minus the input embedding table
    unless the output layer shares it (an embedding lookup reads B rows, not the table)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    table = model.embedding.word_embeddings.weight
    if not model.share_embeddings_and_output_weights:
        total -= table.numel() * table.element_size()
    return total


def kv_bytes_per_token(engine) -> float:
    """KV-cache bytes per token, measured from the allocated pool: engine.cache.nbytes() / the positions it holds
    (num_blocks × block_size, the scratch block included: every block is the same size). Call it inside
    `engine.generating()` after a generate call (the cache allocates its layers on first use)."""
    return engine.cache.nbytes() / engine.cache.capacity_tokens


# ----------------------------------------------------------------------------------------------- the models


def write_random_checkpoint(arch: str, model_kwargs: dict, dtype: torch.dtype, directory: Path, seed: int,
                            device: str) -> None:
    """A Qwen2 or DeepSeek-V3 checkpoint with transformers' own random init, saved in `dtype`."""
    import transformers

    names = {"qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "deepseek-v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM")}
    config_cls, model_cls = (getattr(transformers, n) for n in names[arch])
    torch.manual_seed(seed)
    with torch.device(device):  # initialising 0.5B parameters is much faster on the GPU
        model = model_cls(config_cls(**model_kwargs))
    model.to(dtype).save_pretrained(directory)


def hf_generate(hf_model, prompts_BP: torch.Tensor, new_tokens: int) -> list[list[int]]:
    out = hf_model.generate(prompts_BP, attention_mask=torch.ones_like(prompts_BP), do_sample=False,
                            max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    if out.shape[1] != prompts_BP.shape[1] + new_tokens:
        raise RuntimeError(f"transformers generate returned {out.shape[1] - prompts_BP.shape[1]} new tokens, not "
                           f"{new_tokens}")
    return out[:, prompts_BP.shape[1]:].tolist()


def ours_generate(engine, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    from r1_megatron.rollout import SamplingParams

    completions = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=new_tokens))
    short = [c.prompt_index for c in completions if len(c.token_ids) != new_tokens]
    if short:
        raise RuntimeError(f"engine: prompts {short} did not produce exactly {new_tokens} tokens")
    return [c.token_ids for c in completions]


# ----------------------------------------------------------------------------------------------- measuring


def measure(generate: Callable[[int], list[list[int]]], new_tokens: int, device: str, repeats: int,
            warmup: int) -> tuple[float, float, list]:
    """(t_1 ms, t_N ms, the tokens of the last N-token call); medians over `repeats` calls after `warmup`."""
    last = {}

    def run_n(_):
        last["tokens"] = generate(new_tokens)

    t1 = time_ms(lambda: None, lambda _: generate(1), device, repeats, warmup)
    tN = time_ms(lambda: None, run_n, device, repeats, warmup)
    return t1, tN, last["tokens"]


def make_jobs(args: argparse.Namespace, vocab_size: int) -> list[dict]:
    """The (batch, prompt length) rows and their prompts, the same for both sides."""
    jobs = []
    for batch in args.batch_sizes:
        for P in args.prompt_lens:
            g = torch.Generator().manual_seed(args.seed + batch + (P if args.kv_lengths else 0))
            jobs.append({"batch": batch, "prompt_len": P,
                         "prompts": torch.randint(0, vocab_size, (batch, P), generator=g).tolist()})
    return jobs


def hf_worker(spec: dict) -> dict:
    """The transformers side, in its own process: every job's (t_1, t_N, tokens). Imports no r1_megatron."""
    from transformers import AutoModelForCausalLM, __version__

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    model = AutoModelForCausalLM.from_pretrained(spec["hf_dir"], dtype=DTYPES[spec["dtype"]]).to(device).eval()
    rows = []
    for job in json.loads(Path(spec["jobs"]).read_text()):
        prompts_BP = torch.tensor(job["prompts"], device=device)
        t1, tN, tokens = measure(lambda n: hf_generate(model, prompts_BP, n), spec["new_tokens"], device,
                                 spec["repeats"], spec["warmup"])
        rows.append({"t1_ms": t1, "tN_ms": tN, "tokens": tokens})
    return {"rows": rows, "transformers": __version__, "threads": torch.get_num_threads(),
            "r1_megatron_imported": any(m.split(".")[0] == "r1_megatron" for m in sys.modules)}


def run_hf_process(args: argparse.Namespace, hf_dir: Path, jobs: list[dict], tmp: Path) -> dict:
    """Run hf_worker in a fresh interpreter on the same checkpoint and prompts (passed by a file)."""
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    spec = {"hf_dir": str(hf_dir), "jobs": str(tmp / "jobs.json"), "dtype": args.dtype, "device": args.device,
            "threads": torch.get_num_threads(), "new_tokens": args.new_tokens, "repeats": args.repeats,
            "warmup": args.warmup, "out": str(tmp / "hf_result.json")}
    (tmp / "hf_spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--hf-worker", str(tmp / "hf_spec.json")],
                          env=env, capture_output=True, text=True, timeout=args.hf_timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"transformers subprocess exited {proc.returncode}: {proc.stderr[-3000:]}")
    result = json.loads(Path(spec["out"]).read_text())
    if result["r1_megatron_imported"]:
        raise RuntimeError("the transformers subprocess imported r1_megatron; its timings are not independent")
    return result


def bench_row(model, job: dict, hf_row: dict, args: argparse.Namespace, param_bytes: int,
              bandwidth_Bps: float) -> dict:
    """One row: our side on the job's B prompts of P tokens, next to the transformers subprocess's figures."""
    from r1_megatron.rollout import Engine

    B, P, N = job["batch"], job["prompt_len"], args.new_tokens
    engine = Engine(model, max_batch_size=B, max_seq_len=P + N)
    with engine.generating():
        t1, tN, ours = measure(lambda n: ours_generate(engine, job["prompts"], n), N, args.device, args.repeats,
                               args.warmup)
        kv_bytes = kv_bytes_per_token(engine)
    row = {"batch": B, "prompt_len": P, "new_tokens": N}
    row.update({f"ours_{k}": v for k, v in split_times(t1, tN, B, P, N).items()})
    row.update({f"hf_{k}": v for k, v in split_times(hf_row["t1_ms"], hf_row["tN_ms"], B, P, N).items()})
    row["decode_speedup_vs_hf"] = row["hf_decode_ms_per_step"] / row["ours_decode_ms_per_step"]
    row["prefill_speedup_vs_hf"] = row["ours_prefill_tokens_per_s"] / row["hf_prefill_tokens_per_s"]
    row["token_agreement"], row["prefix_agreement"] = agreement(ours, hf_row["tokens"])
    floor = decode_floor_ms(param_bytes, kv_bytes, B, P + N / 2, bandwidth_Bps)
    row.update(param_bytes=param_bytes, kv_bytes_per_token=kv_bytes, mean_context=P + N / 2,
               floor_ms=floor, floor_fraction=floor / row["ours_decode_ms_per_step"],
               hf_floor_fraction=floor / row["hf_decode_ms_per_step"])
    return row


def kv_bytes_by_preset(names: list[str], dtype: torch.dtype) -> list[dict]:
    """KV bytes per token of each preset's engine cache (random weights; a 2-token prompt allocates the cache)."""
    from r1_megatron.models import build_model, preset
    from r1_megatron.rollout import Engine, SamplingParams

    out = []
    for name in names:
        config = preset(name)
        engine = Engine(build_model(config, dtype=dtype), max_batch_size=1, max_seq_len=8)
        with engine.generating():
            engine.generate([[1, 2]], SamplingParams(temperature=0, max_new_tokens=1))
            kv_bytes = kv_bytes_per_token(engine)
        mla = config.mla
        arch = getattr(config.architecture, "value", config.architecture)  # an enum: its name in the JSON
        out.append({"preset": name, "architecture": arch, "dtype": str(dtype).removeprefix("torch."),
                    "kv_bytes_per_token": kv_bytes, "num_layers": config.num_layers,
                    "num_attention_heads": config.num_attention_heads, "num_kv_heads": config.num_kv_heads,
                    "head_dim": config.head_dim, "mla": None if mla is None else {
                        "kv_lora_rank": mla.kv_lora_rank, "qk_nope_head_dim": mla.qk_nope_head_dim,
                        "qk_rope_head_dim": mla.qk_rope_head_dim, "v_head_dim": mla.v_head_dim}})
        del engine
    return out


def kv_bytes_all_presets() -> list[dict]:
    """Every preset's KV-cache bytes per token per GPU in bf16, computed (not allocated: most presets are too big
    to build here) with the function the engine sizes its pool with, at TP 1 and TP 8, MLA latent and expanded.
    kv_bytes_by_preset measures the allocation of the presets that can be built and must agree with this."""
    from r1_megatron.models import preset
    from r1_megatron.models.presets import PRESETS
    from r1_megatron.rollout.cache_config import layer_kv_bytes_per_token

    rows = []
    for name in PRESETS:
        config = preset(name)
        for tp in (1, 8):
            if config.mla is None and config.num_kv_heads % tp:
                continue  # KV heads must divide over TP (Megatron's rule)
            for latent in ((True, False) if config.mla is not None else (False,)):
                per_layer = layer_kv_bytes_per_token(config, tp, 2, latent)
                rows.append({"preset": name, "tp": tp, "mla_latent": latent if config.mla is not None else None,
                             "bf16_bytes_per_token_per_gpu": config.num_layers * per_layer})
    return rows


def goal_verdict(rows: list[dict], device: str) -> dict:
    """Whether this run met the goal of its device (GOALS); met is None without a row the goal speaks of."""
    goal = GOALS["cuda" if device == "cuda" else "cpu"]
    big = [r for r in rows if r["batch"] >= goal["min_batch"]]
    floor_rows = [r for r in rows if r["batch"] == goal.get("floor_batch")]
    met = None
    if big:
        met = all(r["decode_speedup_vs_hf"] >= goal["decode_speedup_vs_hf"] for r in big) and \
            all(r["floor_fraction"] >= goal["floor_fraction"] for r in floor_rows)
    statement = f"decode >= {goal['decode_speedup_vs_hf']}x transformers generate at batch >= {goal['min_batch']}"
    if "floor_batch" in goal:
        statement += f" and >= {goal['floor_fraction']:.0%} of the bandwidth floor at batch {goal['floor_batch']}"
    return {"statement": f"{device}: {statement}", **goal, "met": met}


def _vocab_size(hf_dir: Path) -> int:
    config = json.loads((hf_dir / "config.json").read_text())
    return config.get("vocab_size") or config["text_config"]["vocab_size"]


def run(args: argparse.Namespace, hf_dir: Path, tmp: Path) -> dict:
    from r1_megatron.models import load_hf

    jobs = make_jobs(args, _vocab_size(hf_dir))
    hf = run_hf_process(args, hf_dir, jobs, tmp)  # first, while this process holds no model
    dtype = DTYPES[args.dtype]
    model = load_hf(hf_dir, dtype=dtype).to(args.device)  # load_hf places it on the GPU whenever one exists
    param_bytes = parameter_bytes(model)
    bandwidth = copy_bandwidth(args.device, min(max(param_bytes, 1 << 26), 1 << 30))
    rows = [bench_row(model, job, hf_row, args, param_bytes, bandwidth) for job, hf_row in zip(jobs, hf["rows"])]
    del model
    source = str(args.hf_dir) if args.hf_dir else "random weights (transformers init), config below"
    mode = "kv-lengths" if args.kv_lengths else "batch-sweep"
    return {"benchmark": "generate", "env": environment(args.device), "device_type": args.device, "mode": mode,
            "model": {"source": source, "architecture": None if args.hf_dir else args.arch,
                      "config": None if args.hf_dir else args.model_kwargs, "dtype": args.dtype,
                      "param_bytes": param_bytes},
            "copy_bandwidth_GBps": bandwidth / 1e9, "results": rows,
            "goal": goal_verdict(rows if mode == "batch-sweep" else [], args.device),
            "kv_growth": context_growth(rows) if args.kv_lengths else None,
            "kv_bytes_by_preset": kv_bytes_by_preset(args.preset, dtype),
            "kv_bytes_all_presets": kv_bytes_all_presets(),
            "hf_process": {k: v for k, v in hf.items() if k != "rows"}}


# ----------------------------------------------------------------------------------------------- output

COLUMNS = [("batch", "B", "d"), ("prompt_len", "P", "d"), ("new_tokens", "N", "d"),
           ("ours_prefill_tokens_per_s", "ours pf tok/s", ".0f"), ("hf_prefill_tokens_per_s", "hf pf tok/s", ".0f"),
           ("ours_decode_ms_per_step", "ours ms/step", ".3f"), ("hf_decode_ms_per_step", "hf ms/step", ".3f"),
           ("ours_decode_tokens_per_s", "ours dec tok/s", ".0f"), ("decode_speedup_vs_hf", "dec x hf", ".2f"),
           ("floor_ms", "floor ms", ".4f"), ("floor_fraction", "of floor", ".3f"),
           ("token_agreement", "agree", ".3f")]


def print_table(payload: dict) -> None:
    env = payload["env"]
    print(f"generate on {payload['device_type']} ({env['device']}), {payload['model']['dtype']}, torch "
          f"{env['torch']}, kernels {env['kernel_backend']} (TRITON_INTERPRET={env['triton_interpret']}); copy "
          f"bandwidth {payload['copy_bandwidth_GBps']:.1f} GB/s")
    print(" | ".join(f"{title:>14}" for _, title, _ in COLUMNS))
    for row in payload["results"]:
        print(" | ".join(f"{format(row[key], fmt):>14}" for key, _, fmt in COLUMNS))
    for g in payload.get("kv_growth") or []:
        print(f"context {g['context_len']:>6} at batch {g['batch']}: ours {g['ours_decode_ms_per_step']:.3f} ms/step "
              f"(x{g['ours_x_shortest']:.2f} of the shortest), hf {g['hf_decode_ms_per_step']:.3f} ms/step "
              f"(x{g['hf_x_shortest']:.2f})")
    for p in payload.get("kv_bytes_by_preset") or []:
        print(f"preset {p['preset']} ({p['architecture']}, {p['dtype']}): {p['kv_bytes_per_token']:.0f} KV bytes/token")
    print(f"goal: {payload['goal']['statement']}: met={payload['goal']['met']}")


def _kernel_backend(device: str) -> dict:
    """Which backend r1_megatron's kernels (RMSNorm in every layer) used: on CPU with TRITON_INTERPRET=1 (as the
    test suite sets it) that is Triton's interpreter, which dominates CPU step times."""
    from r1_megatron.kernels import select_backend

    return {"kernel_backend": select_backend(torch.zeros(1, device=device)).value,
            "triton_interpret": os.environ.get("TRITON_INTERPRET", "0")}


def main(argv: list[str] | None = None) -> dict | None:
    args = _parse(argv)
    if args.hf_worker is not None:
        spec = json.loads(args.hf_worker.read_text())
        Path(spec["out"]).write_text(json.dumps(hf_worker(spec)))
        return None
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        hf_dir = args.hf_dir
        if hf_dir is None:
            hf_dir = Path(tmp) / "hf"
            write_random_checkpoint(args.arch, args.model_kwargs, DTYPES[args.dtype], hf_dir, args.seed, args.device)
        payload = run(args, hf_dir, Path(tmp))
    payload["env"]["command"] = command_line(__file__, argv)
    payload["env"].update(_kernel_backend(args.device))
    print_table(payload)
    text = json.dumps(payload, indent=2)
    print(text)
    out = args.out or (RESULTS_DIR / f"bench_generate_{slug(payload['env']['device'])}.json"
                       if args.device == "cuda" else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
