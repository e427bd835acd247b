"""Triton RMSNorm (interpreted) against a float64 evaluation of the reference: y, dx and dweight."""
import pytest
import torch

from r1_megatron.kernels import reference, rms_norm
from r1_megatron.kernels.backend import Backend, select_backend


@pytest.fixture(autouse=True)
def _triton_path():
    assert select_backend(torch.zeros(1)) is Backend.TRITON


def _run(fn, x, w, dy, eps):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    y = fn(x, w, eps)
    y.backward(dy)
    return y.detach(), x.grad, w.grad


def _rel(a, b):
    """Max error relative to the largest gold entry (floored: at H = 1 the true dx is ~0, a cancellation)."""
    return ((a.double() - b.double()).abs().max() / b.abs().max().clamp_min(1e-2)).item()


@pytest.mark.parametrize("shape", [(3, 7), (2, 5, 129), (6, 1000), (3, 1), (9, 64)])
def test_fp32_matches_float64(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g) * 3
    w = 1 + 0.5 * torch.randn(shape[-1], generator=g)
    dy = torch.randn(shape, generator=g)
    gold = _run(reference.rms_norm, x.double(), w.double(), dy.double(), 1e-5)
    got = _run(rms_norm, x, w, dy, 1e-5)
    for a, b in zip(got, gold):
        assert a.dtype == torch.float32
        assert _rel(a, b) < 1e-5


@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float32])
def test_bf16_three_ways(w_dtype):
    """bf16 x (with bf16 or fp32 weight): kernel and bf16 reference both against the fp32 gold."""
    g = torch.Generator().manual_seed(1)
    x, w, dy = torch.randn(8, 257, generator=g), 1 + 0.3 * torch.randn(257, generator=g), torch.randn(8, 257, generator=g)
    gold = _run(reference.rms_norm, x.double(), w.double(), dy.double(), 1e-6)
    args = (x.bfloat16(), w.to(w_dtype), dy.bfloat16(), 1e-6)
    got, ref = _run(rms_norm, *args), _run(reference.rms_norm, *args)
    assert got[0].dtype == torch.bfloat16 and got[2].dtype == w_dtype
    for k, r, g_ in zip(got, ref, gold):
        assert _rel(k, g_) < 2e-2
        assert _rel(k, g_) <= 1.5 * _rel(r, g_) + 4e-3


def test_noncontiguous_input_and_zero_rows():
    x = torch.randn(4, 10)[:, :7]
    w = torch.randn(7)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6), rtol=1e-5, atol=1e-6)
    assert rms_norm(torch.zeros(0, 7), w, 1e-6).shape == (0, 7)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="weight"):
        rms_norm(torch.randn(2, 4), torch.randn(5))
    with pytest.raises(ValueError, match="eps=-1"):
        rms_norm(torch.randn(2, 4), torch.randn(4), -1.0)
