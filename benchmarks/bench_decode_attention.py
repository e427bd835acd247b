"""Benchmark paged decode attention: the Triton kernel vs the torch reference and vs SDPA on a contiguous cache.

    python benchmarks/bench_decode_attention.py               # GPU: B in {1, 8, 64} x kv length 64..32768, bf16
    python benchmarks/bench_decode_attention.py --device cpu  # small shapes in fp32, seconds (Triton provider only
                                                              # with TRITON_INTERPRET=1)

Providers: "triton" (r1_megatron.kernels.decode_attention on the paged cache), "eager" (the torch reference:
block-table gather of every row's blocks, masked softmax, einsum) and "sdpa" (F.scaled_dot_product_attention
on a contiguous [B, G, L, D] cache: the pre-paging baseline, which reads the same bytes without indirection).
Shapes: Qwen2-1.5B GQA (N=12 query heads, G=2 kv heads, D=E=128) and DeepSeek-V3's MLA latent cache at TP8
(N=16 local heads, G=1, D=576 = 512 latent + 64 rope, E=512, v a view of k's first 512 columns). Every row has
the case's kv length L, in blocks of S=16 tokens scattered over a shuffled pool. The bytes counted are the KV
bytes one call must read: B·L·G·(D + E) elements, or B·L·G·D when v is a view of k (the same bytes). Reported
per provider: µs (median; on CUDA the L2 cache is flushed before every call), achieved GB/s of those bytes, and
the time as a percentage of their copy-bandwidth floor, as in the other kernel benchmarks.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (RESULTS_DIR, Case, common_parser, copy_bandwidth, environment, peak_extra_bytes,  # noqa: E402
                          print_table, select_providers, slug, time_ms, triton_runs_on, write_payload)

from r1_megatron.kernels import decode_attention, reference  # noqa: E402

BLOCK = 16
MODELS = {  # name → (N, G, D, E, v is a view of k)
    "qwen2-1.5b": (12, 2, 128, 128, False),
    "dsv3-mla-tp8": (16, 1, 576, 512, True),
}
L2_FLUSH_BYTES = 256 << 20  # larger than any current GPU's L2 (H100/H200: 50 MiB)


def make_case(model: str, B: int, L: int, dtype: torch.dtype, device: str) -> Case:
    N, G, D, E, latent = MODELS[model]
    M = math.ceil(L / BLOCK)

    def make():
        g = torch.Generator(device=device).manual_seed(0)
        k = torch.randn(B * M, BLOCK, G, D, generator=g, device=device).to(dtype)
        v = k[..., :E] if latent else torch.randn(B * M, BLOCK, G, E, generator=g, device=device).to(dtype)
        table = torch.randperm(B * M, generator=g, device=device).to(torch.int32).view(B, M)
        dense_k = _contiguous(k, table, L)
        return dict(q=torch.randn(B, N, D, generator=g, device=device).to(dtype), k=k, v=v, table=table,
                    lens=torch.full((B,), L, dtype=torch.int32, device=device), scale=1 / math.sqrt(D),
                    dense_k=dense_k, dense_v=dense_k[..., :E] if latent else _contiguous(v, table, L))

    read = B * L * G * (D if latent else D + E) * dtype.itemsize
    return Case({"model": model, "B": B, "kv_len": L, "dtype": str(dtype).removeprefix("torch.")}, make, read,
                {"fwd": 1})


def _contiguous(cache_PSGD: torch.Tensor, table_BM: torch.Tensor, L: int) -> torch.Tensor:
    """The rows' first L tokens as one dense [B, G, L, D] cache (what SDPA reads)."""
    return cache_PSGD[table_BM.long()].flatten(1, 2)[:, :L].transpose(1, 2).contiguous()


def _paged(fn):
    return lambda x: fn(x["q"], x["k"], x["v"], x["table"], x["lens"], x["scale"])


def _sdpa_contiguous(x):
    q_BN1D = x["q"][:, :, None]
    return F.scaled_dot_product_attention(q_BN1D, x["dense_k"], x["dense_v"], scale=x["scale"], enable_gqa=True)


def providers(device: str, skipped: dict) -> dict:
    found = {"eager": _paged(reference.decode_attention), "sdpa": _sdpa_contiguous}
    if triton_runs_on(device, skipped):
        found["triton"] = _paged(decode_attention)
    return found


def cases(args) -> list[Case]:
    if args.tiny:
        return [make_case(m, 2, 40, torch.float32, args.device) for m in MODELS]
    if args.device == "cpu":
        return [make_case(m, B, L, torch.float32, "cpu") for m in MODELS for B in (1, 4) for L in (64, 512)]
    return [make_case(m, B, L, torch.bfloat16, "cuda") for m in MODELS for B in (1, 8, 64)
            for L in (64, 512, 4096, 32768)]


def time_case(case: Case, chosen: dict, skipped: dict, args, repeats: int, bandwidth: float,
              flush: torch.Tensor) -> list[dict]:
    """One row per provider that runs `case`, on inputs built once (and freed on return)."""
    inputs = case.make()
    setup = lambda: (flush.zero_(), inputs)[1]  # noqa: E731 (a call never finds its bytes in L2)
    floor_ms = case.bytes_per_pass / bandwidth * 1e3
    rows = []
    for name, provider in chosen.items():
        try:
            ms = time_ms(setup, provider, args.device, repeats, warmup=0 if args.tiny else 3)
            peak = peak_extra_bytes(setup, provider, args.device)
        except Exception as exc:  # e.g. the reference's fp32 gather out of memory: reported, not fatal
            skipped[f"{name} {case.label}"] = f"{type(exc).__name__}: {exc}"[:300]
            continue
        rows.append({**case.label, "us": round(ms * 1e3, 2), "kv_GBps": round(case.bytes_per_pass / ms / 1e6, 1),
                     "provider": name, "mode": "fwd", "ms": ms,
                     "peak_extra_MiB": None if peak is None else peak / 2**20, "floor_ms": floor_ms,
                     "pct_of_floor": 100 * floor_ms / ms})
    return rows


def run(cases: list[Case], chosen: dict, skipped: dict, args, repeats: int) -> dict:
    """Time every provider on every case; print the table, write and return the JSON payload."""
    bandwidth = copy_bandwidth(args.device, min(max(c.bytes_per_pass for c in cases), 1 << 30))
    flush = torch.empty(L2_FLUSH_BYTES // 4 if args.device == "cuda" else 0, device=args.device)
    rows = [row for case in cases for row in time_case(case, chosen, skipped, args, repeats, bandwidth, flush)]
    payload = {"benchmark": "decode_attention", "env": environment(args.device),
               "copy_bandwidth_GBps": bandwidth / 1e9, "results": rows, "skipped": skipped}
    print_table(payload)
    write_payload(payload, args.out or RESULTS_DIR / f"decode_attention-{slug(payload['env']['device'])}.json")
    return payload


def main(argv: list[str] | None = None) -> dict:
    args = common_parser(__doc__.splitlines()[0]).parse_args(argv)
    skipped: dict[str, str] = {}
    chosen = select_providers(providers(args.device, skipped), args, skipped)
    repeats = args.repeats or (1 if args.tiny else 3 if args.device == "cpu" else 50)
    return run(cases(args), chosen, skipped, args, repeats)


if __name__ == "__main__":
    main()
