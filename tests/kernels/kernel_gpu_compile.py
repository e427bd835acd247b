"""Compile every Triton kernel for an H100/H200 (sm_90) without a GPU: `python kernel_gpu_compile.py`.

The interpreter runs kernels as numpy, so it cannot see what only the compiler checks (types of loop-carried
values, int arguments specialised to constexpr 1, constexpr branches). This compiles each kernel through
TTIR → PTX → cubin with the specialisations a real launch produces and fails on any error, on local memory
(register spills) in the cubin as cuobjdump reports it, or on an approximate instruction in the PTX of a kernel
that must match torch bit for bit (the sampling kernel: IEEE division, fp64 logs for the noise).
Must run in a process without TRITON_INTERPRET (the kernels must be real JIT functions).
"""
from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from r1_megatron.kernels import decode_attention_triton as decode  # noqa: E402
from r1_megatron.kernels import group_advantage_triton as adv  # noqa: E402
from r1_megatron.kernels import grpo_loss_triton as loss  # noqa: E402
from r1_megatron.kernels import rmsnorm_triton as norm  # noqa: E402
from r1_megatron.kernels import sampling_triton as samp  # noqa: E402
from r1_megatron.kernels import softmax_stats_triton as stats  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
F32 = "*fp32"
ALIGNED = ("ptr", "stride", "V_local", "H")  # 16-divisible at real launches (aligned buffers, V % 16 == 0)

VOCAB_PARTIALS = dict(logits_ptr="*bf16", stride_b="i64", stride_t="i64", T="i32", targets_ptr="*i64",
                      partials_ptr=F32, V_local="i32", vocab_start="i32", inv_temp="fp32")
LOGPROB = dict(partials_ptr=F32, logp_ptr=F32, N="i32", TP="i32")
TOKEN_LOSS = dict(partials_ptr=F32, N="i32", TP="i32", T="i32", old_ptr=F32, ref_ptr=F32, adv_ptr=F32,
                  adv_stride_b="i32", adv_stride_t="i32", mask_ptr="*i1", logp_ptr=F32, logz_ptr=F32,
                  dloss_ptr=F32, row_sums_ptr=F32, clip_low="fp32", clip_high="fp32", dual_clip="fp32",
                  kl_coef="fp32", log_ratio_clamp="fp32", kl_log_ratio_clamp="fp32", kl_value_clamp="fp32")
LOGITS_GRAD = dict(logits_ptr="*bf16", stride_b="i64", stride_t="i64", grad_ptr="*bf16", gstride_b="i64",
                   gstride_t="i64", T="i32", targets_ptr="*i64", logz_ptr=F32, dloss_ptr=F32, weight_ptr=F32,
                   grad_out_ptr=F32, V_local="i32", vocab_start="i32", inv_temp="fp32")
GROUP_ADV = dict(rewards_ptr=F32, adv_ptr=F32, status_ptr="*i64", n_groups="i32", group_size="i32", eps="fp32")
NORM_FWD = dict(x_ptr="*bf16", x_stride="i32", w_ptr="*fp32", y_ptr="*bf16", y_stride="i32", rstd_ptr=F32, H="i32",
                eps="fp32")
SAMPLING = dict(logits_ptr="*bf16", stride_b="i64", temperature_ptr=F32, seeds_ptr="*i64", steps_ptr="*i64",
                tau_ptr=F32, partials_ptr="*fp64", vocab_start="i32", vocab_end="i32", split_groups="i32",
                n_splits="i32")
SAMPLING_COMBINE = dict(partials_ptr="*fp64", n_parts="i32", tokens_ptr="*i64", logprobs_ptr=F32)
# approximate fp32 division / log would break the sampling kernel's bit-exact scores (Triton's `/` is div.full)
EXACT_PTX = {samp._sampling_partials_kernel: ("div.full.f32", "div.approx.f32", "lg2.approx.f32")}
NORM_BWD = dict(dy_ptr="*bf16", dy_stride="i32", x_ptr="*bf16", x_stride="i32", w_ptr="*fp32", rstd_ptr=F32,
                dx_ptr="*bf16", dx_stride="i32", dw_part_ptr=F32, M="i32", H="i32")
DECODE_SPLIT = dict(q_ptr="*bf16", stride_qb="i32", stride_qn="i32", stride_qd="i32", k_ptr="*bf16", stride_kp="i64",
                    stride_ks="i32", stride_kg="i32", stride_kd="i32", v_ptr="*bf16", stride_vp="i64", stride_vs="i32",
                    stride_vg="i32", stride_ve="i32", table_ptr="*i32", stride_tb="i32", stride_tm="i32",
                    lens_ptr="*i32", stride_lb="i32", part_out_ptr=F32, part_lse_ptr=F32, N="i32", group="i32",
                    head_tiles="i32", D="i32", E="i32", S="i32", M="i32", qk_scale="fp32")
DECODE_SPLIT_FP32 = {k: F32 if k in ("q_ptr", "k_ptr", "v_ptr") else v for k, v in DECODE_SPLIT.items()}
DECODE_REDUCE = dict(part_out_ptr=F32, part_lse_ptr=F32, out_ptr="*bf16", stride_ob="i32", stride_on="i32",
                     splits="i32", E="i32")
DECODE_ONES = ("stride_qd", "stride_kd", "stride_ve", "stride_tm", "stride_lb", "head_tiles")  # contiguous dims


def _decode_consts(D: int, E: int, group: int) -> dict:
    launch = decode.DecodeLaunch.for_dims(D, E, group)
    return dict(BLOCK_H=launch.block_h, BLOCK_T=launch.block_t, BLOCK_D=launch.block_d, BLOCK_DT=launch.block_dt,
                HAS_TAIL=launch.has_tail, BLOCK_E=launch.block_e, UPCAST=False)


def jobs():
    """(kernel, runtime signature, constexprs, int args equal to 1 at launch, num_warps)."""
    yield stats._vocab_partials_kernel, VOCAB_PARTIALS, dict(BLOCK_V=4096), (), 8
    yield stats._vocab_partials_kernel, VOCAB_PARTIALS, dict(BLOCK_V=64), ("T",), 4
    yield stats._logprob_kernel, LOGPROB, dict(BLOCK_N=1024), ("TP",), 4
    yield stats._logprob_kernel, LOGPROB, dict(BLOCK_N=16), (), 4
    for has_ref, kind, dual in itertools.product((True,), (1, 2, 3), (True, False)):
        yield loss._token_loss_kernel, TOKEN_LOSS, dict(HAS_REF=has_ref, ADD_KL=True, KL_KIND=kind, HAS_DUAL=dual,
                                                        BLOCK_T=1024), (), 4
    yield loss._token_loss_kernel, TOKEN_LOSS, dict(HAS_REF=False, ADD_KL=False, KL_KIND=3, HAS_DUAL=False,
                                                    BLOCK_T=1), ("TP", "T", "N", "adv_stride_b"), 4
    yield loss._logits_grad_kernel, LOGITS_GRAD, dict(BLOCK_V=4096), (), 8
    yield loss._logits_grad_kernel, LOGITS_GRAD, dict(BLOCK_V=64), ("T",), 4
    for kind in (0, 1, 2):
        yield adv._group_advantage_kernel, GROUP_ADV, dict(STD_KIND=kind, BLOCK_G=256, BLOCK_S=16), (), 4
    yield norm._rms_norm_fwd_kernel, NORM_FWD, dict(BLOCK_H=8192), (), 16
    yield norm._rms_norm_fwd_kernel, NORM_FWD, dict(BLOCK_H=8), ("H",), 1
    yield norm._rms_norm_bwd_kernel, NORM_BWD, dict(BLOCK_H=8192), (), 16
    # Qwen2-1.5B (12 heads over 2 kv heads), MHA (group 1), DeepSeek-V3's MLA latent cache at TP8, fp32 GQA
    yield decode._decode_split_kernel, DECODE_SPLIT, _decode_consts(128, 128, 6), DECODE_ONES, 4
    yield decode._decode_split_kernel, DECODE_SPLIT, _decode_consts(128, 128, 1), DECODE_ONES + ("group",), 4
    yield decode._decode_split_kernel, DECODE_SPLIT, _decode_consts(576, 512, 16), DECODE_ONES, 4
    yield decode._decode_split_kernel, DECODE_SPLIT_FP32, _decode_consts(128, 128, 8), DECODE_ONES, 4
    yield decode._decode_reduce_kernel, DECODE_REDUCE, dict(BLOCK_SPLITS=64, BLOCK_E=512), (), 4
    yield decode._decode_reduce_kernel, DECODE_REDUCE, dict(BLOCK_SPLITS=1, BLOCK_E=128), ("splits",), 4
    for has_tau in (True, False):
        yield samp._sampling_partials_kernel, SAMPLING, dict(HAS_TAU=has_tau, BLOCK_Q=256), (), 8
    yield samp._sampling_partials_kernel, SAMPLING, dict(HAS_TAU=True, BLOCK_Q=32), ("n_splits",), 1
    yield samp._combine_kernel, SAMPLING_COMBINE, dict(BLOCK_N=256), (), 4


def compile_for_sm90(fn, runtime_sig: dict, consts: dict, ones: tuple, num_warps: int):
    names = [p.name for p in fn.params]
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(names):
        if name in consts or name in ones:
            signature[name] = "constexpr"
            constexprs[(i,)] = consts.get(name, 1)
        else:
            signature[name] = runtime_sig[name]
            if any(tag in name for tag in ALIGNED):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=TARGET,
                          options={"num_warps": num_warps})


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG / STACK / LOCAL of the kernel in `cubin`, from the cuobjdump that ships with triton."""
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    return {k: int(v) for k, v in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", text)}


def main() -> int:
    failures = 0
    for fn, sig, consts, ones, warps in jobs():
        what = f"{fn.__name__} {consts} ones={ones}"
        try:
            compiled = compile_for_sm90(fn, sig, consts, ones, warps)
            usage = resource_usage(compiled.asm["cubin"])
        except Exception as exc:  # report every kernel, then fail
            failures += 1
            print(f"FAIL {what}: {type(exc).__name__}: {str(exc)[:2000]}")
            continue
        spills = usage.get("LOCAL", 0) > 0 or usage.get("STACK", 0) > 0
        inexact = [op for op in EXACT_PTX.get(fn, ()) if op in compiled.asm["ptx"]]
        failures += spills or bool(inexact)
        print(f"{'FAIL' if spills or inexact else 'ok'} {what} {usage}{f' inexact: {inexact}' if inexact else ''}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
