"""Adversarial inputs to the GRPO loss: stale, broken or hostile log-probabilities that would blow the loss or its
gradient up, on both backends (Triton through the interpreter, and the PyTorch reference). Each case states the
input and asserts the guarded outcome; the unguarded outcome (the clamps off) is asserted too, so a case cannot pass
without the guard doing the work."""
import math

import pytest
import torch

from r1_megatron.kernels import grpo_loss

# the unguarded runs overflow on purpose (Triton's interpreter computes with numpy, which warns); a guarded overflow
# would show as a non-finite value the asserts catch
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")]
OFF = dict(log_ratio_clamp=None, kl_log_ratio_clamp=None, kl_value_clamp=None)
LN2 = math.log(2.0)


@pytest.fixture(params=["triton", "torch"])
def backend(request, monkeypatch):
    monkeypatch.setenv("R1_MEGATRON_KERNELS", request.param)
    return request.param


def one_token(old: float, adv: float, ref: float | None = None, **kw):
    """(loss, stats, d loss/d logits) of one token with logits [0, 0] (logp = −ln 2) and target 0."""
    logits = torch.zeros(1, 1, 2, requires_grad=True)
    ref_BT = None if ref is None else torch.tensor([[ref]])
    loss, stats = grpo_loss(logits, torch.zeros(1, 1, dtype=torch.long), torch.tensor([[old]]), ref_BT,
                            torch.tensor([adv]), torch.ones(1, 1, dtype=torch.bool), **kw)
    loss.backward()
    return loss.detach().double(), stats, logits.grad[0, 0].double()


def test_a_log_ratio_of_25_with_negative_advantage_and_no_dual_clip(backend):
    """The issue's case: logp − old = 25, A = −1, ε = 0.2, no dual clip, no KL. The surrogate takes the unclipped
    branch ρA (it is the smaller), so unguarded the loss is ρ = e^25 ≈ 7.2e10 and the gradient e^25·(½, −½) ≈ 3.6e10
    per logit, from one token. Guarded (verl's ±20) the loss is e^20 ≈ 4.9e8 and the gradient exactly 0."""
    old = -LN2 - 25.0
    loss, stats, grad = one_token(old, -1.0, kl_coef=0.0)
    assert loss.item() == pytest.approx(math.exp(20.0), rel=1e-6)
    assert (grad == 0).all()
    assert stats["clip_frac"] == 1  # the clamp cut the token's gradient
    loss_off, _, grad_off = one_token(old, -1.0, kl_coef=0.0, **OFF)
    assert loss_off.item() == pytest.approx(math.exp(25.0), rel=1e-5)
    assert grad_off.tolist() == pytest.approx([math.exp(25.0) / 2, -math.exp(25.0) / 2], rel=1e-5)
    assert loss_off / loss == pytest.approx(math.exp(5.0), rel=1e-5)


@pytest.mark.parametrize("log_ratio", [40.0, 100.0, 1e4, -1e4, float("inf"), float("-inf")])
def test_extreme_and_infinite_log_ratios_give_a_bounded_nan_free_loss(backend, log_ratio):
    """An old logprob of ±inf (a corrupted rollout, or a token the engine scored at probability 0) or wildly stale:
    loss = −min(ρA, clip(ρ)A) with ρ = e^clamp(logp − old) is at most e^20·|A|, finite, with a finite gradient.
    Unguarded, ρ overflows fp32 (e^89 = inf) and the loss is inf (or NaN from inf − inf)."""
    old = -LN2 - log_ratio
    for adv in (-1.5, 1.5):
        loss, stats, grad = one_token(old, adv, kl_coef=0.0)
        assert torch.isfinite(grad).all() and all(torch.isfinite(v).all() for v in stats.values())
        if log_ratio > 0:
            # A < 0 takes ρA = −e^20·|A|; A > 0 takes the clip, (1 + ε)A
            assert loss.item() == pytest.approx(math.exp(20.0) * 1.5 if adv < 0 else -1.2 * 1.5, rel=1e-6)
        else:
            # ρ = e^−20: A > 0 takes ρA ≈ 0; A < 0 takes the clip (1 − ε)A
            assert loss.item() == pytest.approx(-math.exp(-20.0) * 1.5 if adv > 0 else 0.8 * 1.5, rel=1e-6)
        assert (grad == 0).all()
    if log_ratio > 89:
        loss_off, _, _ = one_token(old, -1.5, kl_coef=0.0, **OFF)
        assert not torch.isfinite(loss_off)


@pytest.mark.parametrize("d", [30.0, 1e4, float("inf"), -30.0, float("-inf")])
def test_a_reference_far_from_the_policy_caps_the_k3_penalty(backend, d):
    """ref − logp = d far from 0 (a reference that was never refreshed, a corrupted reference pass): k3 = e^d − d − 1
    with d clamped to ±20 is capped at 10, so the token's KL term is β·10 and passes no gradient. Unguarded the term
    is above the cap: k3 = 29 at d = −30, ≈ 1.1e13 at d = 30, inf or NaN (inf − inf) at d = ±inf."""
    loss, stats, grad = one_token(-LN2, 0.0, ref=-LN2 + d, kl_coef=0.1)  # A = 0: the loss is the KL term alone
    assert loss.item() == pytest.approx(0.1 * 10.0, rel=1e-6) and stats["kl"].item() == pytest.approx(10.0)
    assert (grad == 0).all()
    loss_off, _, _ = one_token(-LN2, 0.0, ref=-LN2 + d, kl_coef=0.1, **OFF)
    assert not loss_off.item() <= 0.1 * 10.0  # NaN compares false


def test_a_batch_with_one_poisoned_token_keeps_the_other_tokens_gradient(backend):
    """One token with old = −inf among ordinary ones: the guarded gradient of every other token is the gradient of
    the batch without that token (seq-mean-token-sum, whose denominator does not depend on the mask)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    targets = torch.randint(0, 11, (2, 5), generator=g)
    old = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0] + 0.1 * torch.randn(2, 5, generator=g)
    adv, mask = torch.tensor([-1.0, 0.7]), torch.ones(2, 5, dtype=torch.bool)
    poisoned_old, without = old.clone(), mask.clone()
    poisoned_old[0, 2], without[0, 2] = float("-inf"), False
    grads = []
    for old_BT, mask_BT in ((poisoned_old, mask), (old, without)):
        x = logits.clone().requires_grad_()
        loss, _ = grpo_loss(x, targets, old_BT, None, adv, mask_BT, kl_coef=0.0, loss_agg="seq-mean-token-sum")
        loss.backward()
        assert torch.isfinite(loss)
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-7, rtol=1e-5)
