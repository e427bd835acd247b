"""Greedy generation speed of r1_megatron's Engine against transformers' `generate`, on one HF checkpoint.

    python benchmarks/bench_generate.py                     # GPU: Qwen2-0.5B-like random bf16 model,
                                                            #   batch 1/8/32/64, prompt 128, 128 new tokens
    python benchmarks/bench_generate.py --device cpu        # CPU (or --tiny): tiny Qwen2 fp32, batch 1/4,
                                                            #   prompt 8, 4 new tokens (a smoke run, seconds)
    python benchmarks/bench_generate.py --hf-dir DIR        # a real HF checkpoint instead of random weights
    python benchmarks/bench_generate.py --out report.json   # write the JSON here (GPU default: benchmarks/results/)

Method.
- Same weights: one HF checkpoint directory (random weights written by transformers' save_pretrained, or
  --hf-dir) is loaded by both sides: `AutoModelForCausalLM.from_pretrained(dir, dtype=...)` (default attention,
  DynamicCache: `generate` as people call it) and `r1_megatron.models.load_hf(dir, dtype=...)` in a
  single-process layout.
- Same work: B random prompts of exactly P tokens (no padding), greedy, exactly N new tokens on both sides:
  ours has no eos_token_ids and max_new_tokens=N; transformers gets do_sample=False and
  min_new_tokens=max_new_tokens=N, so no EOS can end a row early.
- Prefill/decode split (the same for both): t_1 = time of a whole generate call with 1 new token (prefill of
  B·P tokens + sampling one token), t_N = the same call with N new tokens. decode ms/step = (t_N − t_1)/(N − 1)
  (the N − 1 further one-token forwards, their sampling and host work); prefill tokens/s = B·P / t_1 (the first
  token's sampling included); decode tokens/s = B / decode step. Each time is the median of --repeats calls
  after --warmup untimed ones, wall time around the whole call (CUDA events on GPU), host overhead included.
  Our calls run inside one `engine.generating()` block, so the KV cache is allocated by the warmup and not timed.
- Decode memory-bandwidth floor: bytes read per decode step = parameter bytes (each unique parameter of this
  rank once; the input embedding table only when it is tied to the output layer, since a lookup reads B rows)
  + B × mean context × KV bytes per token. KV bytes per token = KVCache.nbytes() / (slots × max_seq_len) of the
  engine's real cache (for MLA that is the per-head k and v our cache stores, not the compressed latent); mean
  context = P + N/2 (decode step k = 1..N−1 attends over P + k keys). floor_ms = bytes / copy bandwidth measured
  on the same device (bench_common.copy_bandwidth); floor_fraction = floor_ms / our decode ms per step
  (hf_floor_fraction likewise). For MoE checkpoints the parameter term counts every expert. On CPU the floor is
  reported too, labelled with the device, but means little for models that fit in cache.
- Sanity: token_agreement = fraction of the B×N positions where both greedy outputs agree; prefix_agreement =
  mean over rows of the agreeing prefix length / N. With bf16 random weights a near-tie can flip one argmax and
  the rows diverge after it; the tiny fp32 model agrees exactly.
- Goal (issue 6, GPU, measured here, not asserted): at batch >= 32, decode_speedup_vs_hf >= 2 and
  floor_fraction >= 0.5; "goal.met" says whether this run met it (null off CUDA or without a batch >= 32 row).

Prints a table and one JSON object {"benchmark", "env", "model", "copy_bandwidth_GBps", "results", "goal"}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS_DIR, copy_bandwidth, environment, slug, time_ms  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GPU_DEFAULTS = dict(batch_sizes=[1, 8, 32, 64], prompt_len=128, new_tokens=128, repeats=3, warmup=1, dtype="bf16")
CPU_DEFAULTS = dict(batch_sizes=[1, 4], prompt_len=8, new_tokens=4, repeats=3, warmup=1, dtype="fp32")
QWEN2_05B_LIKE = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                      rope_parameters=dict(rope_type="default", rope_theta=1000000.0), rms_norm_eps=1e-6,
                      tie_word_embeddings=True)
TINY_QWEN2 = dict(vocab_size=150, hidden_size=96, intermediate_size=120, num_hidden_layers=2, num_attention_heads=6,
                  num_key_value_heads=2, max_position_embeddings=128,
                  rope_parameters=dict(rope_type="default", rope_theta=50000.0), rms_norm_eps=1e-6,
                  tie_word_embeddings=False)
GOAL = dict(min_batch=32, decode_speedup_vs_hf=2.0, floor_fraction=0.5)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny Qwen2 and CPU shapes, also on a GPU")
    p.add_argument("--hf-dir", type=Path, default=None, help="benchmark this HF checkpoint (default: random weights)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    p.add_argument("--prompt-len", type=int, default=None)
    p.add_argument("--new-tokens", type=int, default=None, help=">= 2: decode time is (t_N - t_1) / (N - 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    p.add_argument("--seed", type=int, default=0, help="random weights and prompts")
    p.add_argument("--out", type=Path, default=None, help="JSON path (GPU default: benchmarks/results/...)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here (use --device cpu)")
    small = args.tiny or args.device == "cpu"
    for name, value in (CPU_DEFAULTS if small else GPU_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.model_kwargs = TINY_QWEN2 if small else QWEN2_05B_LIKE
    for name, low in (("prompt_len", 1), ("new_tokens", 2), ("repeats", 1), ("warmup", 0)):
        if getattr(args, name) < low:
            p.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
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


def parameter_bytes(model) -> int:
    """Bytes of weights one decode step reads: every unique parameter once, minus the input embedding table
    unless the output layer shares it (an embedding lookup reads B rows, not the table)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    table = model.embedding.word_embeddings.weight
    if not model.share_embeddings_and_output_weights:
        total -= table.numel() * table.element_size()
    return total


# ----------------------------------------------------------------------------------------------- the models


def write_random_checkpoint(model_kwargs: dict, dtype: torch.dtype, directory: Path, seed: int, device: str) -> None:
    """A Qwen2 checkpoint with transformers' own random init, saved in `dtype`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):  # initialising 0.5B parameters is much faster on the GPU
        model = Qwen2ForCausalLM(Qwen2Config(**model_kwargs))
    model.to(dtype).save_pretrained(directory)


def load_both(hf_dir: Path, dtype: torch.dtype, device: str):
    """(transformers model in eval mode, r1_megatron model) from the same directory on `device` (the engine puts
    ours in eval mode itself while generating)."""
    from transformers import AutoModelForCausalLM

    from r1_megatron.models import load_hf

    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).to(device).eval()
    ours = load_hf(hf_dir, dtype=dtype).to(device)  # load_hf places it on the GPU whenever one exists
    return hf_model, ours


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


def measure(generate: Callable[[int], list[list[int]]], args: argparse.Namespace) -> tuple[float, float, list]:
    """(t_1 ms, t_N ms, the tokens of the last N-token call); medians over args.repeats."""
    last = {}

    def run_n(_):
        last["tokens"] = generate(args.new_tokens)

    t1 = time_ms(lambda: None, lambda _: generate(1), args.device, args.repeats, args.warmup)
    tN = time_ms(lambda: None, run_n, args.device, args.repeats, args.warmup)
    return t1, tN, last["tokens"]


def bench_batch(hf_model, model, batch: int, args: argparse.Namespace, param_bytes: int,
                bandwidth_Bps: float) -> dict:
    """One row: both sides on the same B prompts of P tokens."""
    from r1_megatron.rollout import Engine
    from r1_megatron.rollout.cache_config import kv_bytes_per_token

    P, N = args.prompt_len, args.new_tokens
    g = torch.Generator().manual_seed(args.seed + batch)
    prompts_BP = torch.randint(0, model.model_config.vocab_size, (batch, P), generator=g)
    hf_t1, hf_tN, theirs = measure(lambda n: hf_generate(hf_model, prompts_BP.to(args.device), n), args)
    engine = Engine(model, max_batch_size=batch, max_seq_len=P + N)
    with engine.generating():
        prompts = prompts_BP.tolist()
        t1, tN, ours = measure(lambda n: ours_generate(engine, prompts, n), args)
    row = {"batch": batch, "prompt_len": P, "new_tokens": N}
    row.update({f"ours_{k}": v for k, v in split_times(t1, tN, batch, P, N).items()})
    row.update({f"hf_{k}": v for k, v in split_times(hf_t1, hf_tN, batch, P, N).items()})
    row["decode_speedup_vs_hf"] = row["hf_decode_ms_per_step"] / row["ours_decode_ms_per_step"]
    row["prefill_speedup_vs_hf"] = row["ours_prefill_tokens_per_s"] / row["hf_prefill_tokens_per_s"]
    row["token_agreement"], row["prefix_agreement"] = agreement(ours, theirs)
    # per token, not the pool's bytes over the tokens: the paged pool holds a scratch block and whole blocks
    per_token = kv_bytes_per_token(engine.model, engine.cache_config.mla_latent)
    floor = decode_floor_ms(param_bytes, per_token, batch, P + N / 2, bandwidth_Bps)
    row.update(param_bytes=param_bytes, kv_bytes_per_token=per_token, mean_context=P + N / 2,
               floor_ms=floor, floor_fraction=floor / row["ours_decode_ms_per_step"],
               hf_floor_fraction=floor / row["hf_decode_ms_per_step"])
    return row


def goal_verdict(rows: list[dict], device: str) -> dict:
    """Whether this run met issue 6's GPU decode goal; None where it does not apply."""
    big = [r for r in rows if r["batch"] >= GOAL["min_batch"]]
    met = None
    if device == "cuda" and big:
        met = all(r["decode_speedup_vs_hf"] >= GOAL["decode_speedup_vs_hf"]
                  and r["floor_fraction"] >= GOAL["floor_fraction"] for r in big)
    return {"statement": "on GPU at batch >= 32: decode >= 2x transformers generate and >= 50% of the decode "
                         "memory-bandwidth floor", **GOAL, "met": met}


def run(args: argparse.Namespace, hf_dir: Path) -> dict:
    dtype = DTYPES[args.dtype]
    hf_model, model = load_both(hf_dir, dtype, args.device)
    param_bytes = parameter_bytes(model)
    bandwidth = copy_bandwidth(args.device, min(max(param_bytes, 1 << 26), 1 << 30))
    rows = [bench_batch(hf_model, model, b, args, param_bytes, bandwidth) for b in args.batch_sizes]
    source = str(args.hf_dir) if args.hf_dir else "random weights (transformers init), config below"
    return {"benchmark": "generate", "env": environment(args.device), "device_type": args.device,
            "model": {"source": source, "config": None if args.hf_dir else args.model_kwargs, "dtype": args.dtype,
                      "param_bytes": param_bytes},
            "copy_bandwidth_GBps": bandwidth / 1e9, "results": rows, "goal": goal_verdict(rows, args.device)}


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
    print(f"goal: {payload['goal']['statement']}: met={payload['goal']['met']}")


def _kernel_backend(device: str) -> dict:
    """Which backend r1_megatron's kernels (RMSNorm in every layer) used: on CPU with TRITON_INTERPRET=1 (as the
    test suite sets it) that is Triton's interpreter, which dominates CPU step times."""
    from r1_megatron.kernels import select_backend

    return {"kernel_backend": select_backend(torch.zeros(1, device=device)).value,
            "triton_interpret": os.environ.get("TRITON_INTERPRET", "0")}


def _command(argv: list[str] | None) -> str:
    script = Path(__file__).resolve()
    try:
        script = script.relative_to(Path.cwd())
    except ValueError:
        pass
    return " ".join([Path(sys.executable).name, str(script), *(sys.argv[1:] if argv is None else argv)])


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        hf_dir = args.hf_dir
        if hf_dir is None:
            hf_dir = Path(tmp) / "hf"
            write_random_checkpoint(args.model_kwargs, DTYPES[args.dtype], hf_dir, args.seed, args.device)
        payload = run(args, hf_dir)
    payload["env"]["command"] = _command(argv)
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
