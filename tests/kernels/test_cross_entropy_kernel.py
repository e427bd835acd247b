"""Triton cross_entropy (interpreted) against a float64 evaluation of the reference: CE and d(Σ w·CE)/d logits."""
import pytest
import torch
from kernel_test_inputs import allocation_recorder, rel_err

from r1_megatron.kernels import cross_entropy, reference
from r1_megatron.kernels.backend import Backend, select_backend

FP32_TOL = 2e-6
GRAD_STORE = {torch.bfloat16: 1e-2, torch.float16: 1e-3}  # rounding of the stored gradient (max-relative)


@pytest.fixture(autouse=True)
def _triton_path():
    assert select_backend(torch.zeros(1)) is Backend.TRITON, "kernel tests must run the Triton interpreter"


def make(B, T, V, seed, ignored=0.0):
    """Logits of scale ~3 (fp32 "true" values), targets, per-token loss weights with some zeros, and a fraction
    `ignored` of targets set to −100."""
    g = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(B, T, V, generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[torch.rand(B, T, generator=g) < ignored] = -100
    weights = (torch.rand(B, T, generator=g) > 0.2).float() * (0.5 + torch.rand(B, T, generator=g))
    return logits, targets, weights


def gold(logits, targets, weights):
    """Float64 reference: (CE [B, T], d Σ w·CE / d logits)."""
    x = logits.double().requires_grad_()
    ce = reference.cross_entropy(x, targets)
    (ce * weights.double()).sum().backward()
    return ce.detach(), x.grad


def run(logits, targets, weights, **kw):
    x = logits.detach().clone().requires_grad_()
    ce = cross_entropy(x, targets, **kw)
    (ce * weights).sum().backward()
    return ce.detach(), x.grad


@pytest.mark.parametrize("B,T,V", [(2, 5, 100), (1, 1, 33), (3, 1, 7), (1, 7, 1000), (3, 3, 517), (1, 2, 151936)])
def test_fp32_forward_and_gradient(B, T, V):
    """V not a multiple of the vocab chunk, T = 1, odd B·T, and the Qwen2 vocabulary."""
    logits, targets, weights = make(B, T, V, seed=B * T + V)
    gold_ce, gold_grad = gold(logits, targets, weights)
    ce, grad = run(logits, targets, weights)
    assert ce.dtype == torch.float32 and ce.shape == (B, T) and grad.dtype == torch.float32
    assert rel_err(ce, gold_ce) < FP32_TOL
    assert rel_err(grad, gold_grad) < FP32_TOL


def test_ignored_targets_and_zero_weights_give_zero_rows():
    logits, targets, weights = make(3, 6, 90, seed=3, ignored=0.3)
    targets[0, 0], targets[1, 1] = 90, -1  # just past the vocabulary, and a plain negative id
    weights[2, 3] = 0.0
    ignored = (targets < 0) | (targets >= 90)
    assert ignored.sum() >= 3
    gold_ce, gold_grad = gold(logits, targets, weights)
    ce, grad = run(logits, targets, weights)
    assert (ce[ignored] == 0).all() and (gold_ce[ignored] == 0).all()
    zero_rows = ignored | (weights == 0)
    assert (grad[zero_rows] == 0).all() and (grad[~zero_rows].abs().sum(-1) > 0).all()
    assert rel_err(ce, gold_ce) < FP32_TOL and rel_err(grad, gold_grad) < FP32_TOL


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype):
    """On bf16/fp16 logits the kernel is fp32-exact on the rounded values; the gradient is stored in that dtype."""
    logits, targets, weights = make(2, 5, 300, seed=21)
    low = logits.to(dtype)
    gold_ce, gold_grad = gold(low.float(), targets, weights)
    ce, grad = run(low, targets, weights)
    assert ce.dtype == torch.float32 and grad.dtype == dtype
    assert rel_err(ce, gold_ce) < FP32_TOL
    assert rel_err(grad, gold_grad) < GRAD_STORE[dtype]
    ref_ce = reference.cross_entropy(low, targets)  # the reference upcasts too: the same values
    assert ref_ce.dtype == torch.float32 and rel_err(ref_ce, gold_ce) < FP32_TOL


def test_strided_logits_and_targets():
    """logits[:, :-1] and ids[:, 1:] slices, as a trainer takes them."""
    logits, targets, weights = make(2, 6, 80, seed=9)
    gold_ce, gold_grad = gold(logits[:, :-1], targets[:, 1:], weights[:, :-1])
    x = logits.clone().requires_grad_()
    ce = cross_entropy(x[:, :-1], targets[:, 1:])
    (ce * weights[:, :-1]).sum().backward()
    assert rel_err(ce, gold_ce) < FP32_TOL
    assert rel_err(x.grad[:, :-1], gold_grad) < FP32_TOL and (x.grad[:, -1] == 0).all()


def test_expanded_incoming_gradient():
    """ce.sum() hands backward a stride-0 gradient."""
    logits, targets, _ = make(2, 3, 50, seed=4)
    _, gold_grad = gold(logits, targets, torch.ones(2, 3))
    x = logits.clone().requires_grad_()
    cross_entropy(x, targets).sum().backward()
    assert rel_err(x.grad, gold_grad) < FP32_TOL


def test_inplace_backward_writes_the_gradient_into_the_logits_buffer():
    logits, targets, weights = make(2, 4, 64, seed=8)
    _, gold_grad = gold(logits, targets, weights)
    base = logits.clone().requires_grad_()
    x = base * 1.0  # a non-leaf with its own buffer, like the LM head's output
    (cross_entropy(x, targets, inplace_backward=True) * weights).sum().backward()
    assert rel_err(base.grad, gold_grad) < FP32_TOL
    assert rel_err(x.detach(), gold_grad) < FP32_TOL


def test_no_vocab_sized_fp32_intermediate(monkeypatch):
    """Forward allocates per-token state only; backward one [B, T, V] tensor, the gradient in bf16."""
    Allocations = allocation_recorder(monkeypatch)
    B, T, V = 2, 3, 1024
    logits, targets, weights = make(B, T, V, seed=1)
    x = logits.to(torch.bfloat16).requires_grad_() * 1.0
    with Allocations() as fwd:
        ce = cross_entropy(x, targets)
    with Allocations() as bwd:
        torch.autograd.grad((ce * weights).sum(), x)
    assert max(t.numel() for t in fwd.records) <= 4 * B * T
    big = {t.untyped_storage().data_ptr(): t.dtype for t in bwd.records if t.numel() >= B * T * V}  # not views
    assert list(big.values()) == [torch.bfloat16]


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="targets"):
        cross_entropy(torch.zeros(2, 3, 8), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="logits"):
        cross_entropy(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
