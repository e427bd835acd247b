"""Triton RMSNorm: forward and backward (dx, dweight), fp32 math on any float input dtype.

Forward: one program per row, the whole hidden dim in one block (H ≤ 64k covers every model we build);
saves rstd [M] fp32. Backward: a persistent grid; each program walks rows pid, pid+P, … and accumulates its
dweight partial in fp32 registers, written once to [P, H]; a final sum over P keeps it deterministic.
    y = x̂·w,  x̂ = x·rstd,  rstd = (mean(x²) + eps)^-½
    dx = rstd·(dy·w − x̂·mean(dy·w·x̂)),   dw = Σ_rows dy·x̂
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .backend import interpreting


def _launch(hidden: int) -> tuple[int, int]:
    block = triton.next_power_of_2(hidden)
    return block, min(max(block // 256, 1), 16)  # ~8 fp32 elements per thread per row


@triton.jit
def _rms_norm_fwd_kernel(x_ptr, x_stride, w_ptr, y_ptr, y_stride, rstd_ptr, H, eps, BLOCK_H: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    valid = cols < H
    x = tl.load(x_ptr + row * x_stride + cols, mask=valid, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / H + eps)
    w = tl.load(w_ptr + cols, mask=valid, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * y_stride + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=valid)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _rms_norm_bwd_kernel(dy_ptr, dy_stride, x_ptr, x_stride, w_ptr, rstd_ptr, dx_ptr, dx_stride, dw_part_ptr, M, H,
                         BLOCK_H: tl.constexpr):
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_H)
    valid = cols < H
    w = tl.load(w_ptr + cols, mask=valid, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_H], tl.float32)
    for row64 in tl.range(pid.to(tl.int64), M, n_prog):  # int64 rows: M·H may exceed 2^31
        x = tl.load(x_ptr + row64 * x_stride + cols, mask=valid, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + row64 * dy_stride + cols, mask=valid, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row64)
        x_hat = x * rstd
        wdy = dy * w
        dx = rstd * (wdy - x_hat * (tl.sum(wdy * x_hat, axis=0) / H))
        tl.store(dx_ptr + row64 * dx_stride + cols, dx.to(dx_ptr.dtype.element_ty), mask=valid)
        dw_acc += dy * x_hat
    tl.store(dw_part_ptr + pid.to(tl.int64) * H + cols, dw_acc, mask=valid)


def _backward_programs(rows: int, device: torch.device) -> int:
    if device.type == "cuda" and not interpreting():
        return min(rows, 4 * torch.cuda.get_device_properties(device).multi_processor_count)
    return min(rows, 4)


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        H = x.shape[-1]
        x_MH = x.reshape(-1, H)
        if x_MH.stride(-1) != 1:
            x_MH = x_MH.contiguous()
        y_MH = torch.empty(x_MH.shape, dtype=x.dtype, device=x.device)
        rstd_M = torch.empty(x_MH.shape[0], dtype=torch.float32, device=x.device)
        block, warps = _launch(H)
        if x_MH.shape[0]:
            _rms_norm_fwd_kernel[(x_MH.shape[0],)](x_MH, x_MH.stride(0), weight, y_MH, y_MH.stride(0), rstd_M, H,
                                                   eps, BLOCK_H=block, num_warps=warps)
        ctx.save_for_backward(x_MH, weight, rstd_M)
        ctx.x_shape = x.shape
        return y_MH.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x_MH, weight, rstd_M = ctx.saved_tensors
        M, H = x_MH.shape
        dy_MH = dy.reshape(M, H)
        if dy_MH.stride(-1) != 1:
            dy_MH = dy_MH.contiguous()
        dx_MH = torch.empty_like(x_MH)
        programs = _backward_programs(M, x_MH.device)
        dw_part_PH = torch.zeros((max(programs, 1), H), dtype=torch.float32, device=x_MH.device)
        block, warps = _launch(H)
        if M:
            _rms_norm_bwd_kernel[(programs,)](dy_MH, dy_MH.stride(0), x_MH, x_MH.stride(0), weight, rstd_M, dx_MH,
                                              dx_MH.stride(0), dw_part_PH, M, H, BLOCK_H=block, num_warps=warps)
        return dx_MH.view(ctx.x_shape), dw_part_PH.sum(dim=0).to(weight.dtype), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return RMSNormFunction.apply(x, weight, eps)
