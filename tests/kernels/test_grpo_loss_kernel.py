"""Triton grpo_loss / token_logprobs (interpreted) against a float64 evaluation of the reference, including the
loss's numerical guards (log-ratios and k3 inputs beyond their clamps)."""
import itertools
import zlib

import pytest
import torch
from kernel_test_inputs import allocation_recorder, dual_clip_active, gold_loss, make_inputs, rel_err, run_loss

from r1_megatron.kernels import grpo_loss, reference, token_logprobs
from r1_megatron.kernels.backend import Backend, select_backend

STAT_KEYS = ("logp", "clip_frac", "kl", "ratio", "entropy")
FP32_TOL = 2e-5


@pytest.fixture(autouse=True)
def _triton_path():
    assert select_backend(torch.zeros(1)) is Backend.TRITON, "kernel tests must run the Triton interpreter"


def check_fp32(inp, **kw):
    gold = gold_loss(inp, **kw)
    got = run_loss(grpo_loss, inp, inp.logits, **kw)
    # the loss sums O(1) terms of both signs and can cancel to ~1e-3: relative above 1, absolute below
    assert rel_err(got[0], gold[0], floor=1.0) < FP32_TOL, (got[0], gold[0])
    for key in STAT_KEYS:
        assert got[1][key].dtype == torch.float32 and not got[1][key].requires_grad
        # relative for O(1) stats; absolute below 1: mean KL (~1e-2, and k1's signed mean can cancel to ~1e-4)
        # is a difference of fp32 log-probs of size ~10, so it carries their ~1e-6 absolute rounding
        assert rel_err(got[1][key], gold[1][key], floor=1.0) < FP32_TOL, key
    assert rel_err(got[2], gold[2]) < FP32_TOL
    return got, gold


@pytest.mark.parametrize("loss_agg,kl_estimator", itertools.product(
    ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"], ["k1", "k2", "k3"]))
def test_every_aggregation_and_kl_estimator(loss_agg, kl_estimator):
    inp = make_inputs(3, 6, 100, seed=zlib.crc32(f"{loss_agg}{kl_estimator}".encode()) % 1000, empty_rows=(1,))
    check_fp32(inp, loss_agg=loss_agg, kl_estimator=kl_estimator, kl_coef=0.3)


@pytest.mark.parametrize("kw", [
    dict(clip_eps_low=0.1),
    dict(clip_eps_low=0.2, clip_eps_high=0.28),  # DAPO clip-higher
    dict(dual_clip=3.0),
    dict(dual_clip=1.5, clip_eps_high=0.28, temperature=0.7),
    dict(temperature=1.3, kl_coef=0.05, loss_agg="token-mean"),
    dict(loss_agg="token-mean", normalizer=37.0),
    dict(loss_agg="seq-mean-token-mean", normalizer=5.0),
    dict(loss_agg="seq-mean-token-sum", normalizer=2.5),
    dict(loss_agg="seq-mean-token-sum-norm", norm_length=16),
    dict(loss_agg="seq-mean-token-sum-norm", normalizer=11.0),
    dict(kl_coef=0.0),
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_clip_settings_temperature_and_normalizers(kw):
    temperature = kw.get("temperature", 1.0)
    inp = make_inputs(4, 8, 97, seed=7, adv_per_token=True, temperature=temperature,
                      old_noise=1.0 if "dual_clip" in kw else 0.3)
    if "dual_clip" in kw:
        assert dual_clip_active(inp, kw["dual_clip"], temperature) > 0
    (_, stats, _), _ = check_fp32(inp, **kw)
    if "dual_clip" in kw or "clip_eps_high" in kw:
        assert 0 < stats["clip_frac"] < 1  # the clip branches are really exercised


def test_r1_stage_one_clip_of_ten_matches_the_reference_and_never_binds_below():
    """R1's stage-1 RL uses ε = 10: the kernel agrees with the float64 reference there, and since a ratio is
    positive the lower bound 1 − 10 < 0 never binds, while ρ > 11 is still clipped above."""
    inp = make_inputs(4, 8, 97, seed=5, adv_per_token=True, old_noise=3.0)
    ratio = torch.exp(reference.token_logprobs(inp.logits.double(), inp.targets) - inp.old.double())
    assert ((ratio > 11) & (inp.adv > 0) & inp.mask).any() and ((ratio < 0.8) & (inp.adv < 0) & inp.mask).any()
    (_, stats, _), (_, gold_stats, _) = check_fp32(inp, clip_eps_low=10.0, clip_eps_high=10.0)
    binds = (ratio > 11) & (inp.adv > 0) & inp.mask  # the only tokens a clip of [−9, 11] cuts
    assert gold_stats["clip_frac"] == pytest.approx(binds.sum().item() / inp.mask.sum().item())


def test_clip_of_ten_by_hand():
    """One token, A = −1, ρ = e^−3 ≈ 0.0498: ε = 0.2 clips ρ up to 0.8 (loss 0.8), ε = 10 leaves it (loss ρ)."""
    logits = torch.tensor([[[0.0, 0.0]]], dtype=torch.float64, requires_grad=True)  # logp = −ln 2
    old = torch.full((1, 1), -torch.log(torch.tensor(2.0)).item() + 3.0, dtype=torch.float64)
    args = (logits, torch.zeros(1, 1, dtype=torch.int64), old, None, torch.tensor([-1.0], dtype=torch.float64),
            torch.ones(1, 1, dtype=torch.bool))
    loss_02, stats_02 = reference.grpo_loss(*args, clip_eps_low=0.2, kl_coef=0.0)
    loss_10, stats_10 = reference.grpo_loss(*args, clip_eps_low=10.0, kl_coef=0.0)
    assert loss_02.item() == pytest.approx(0.8) and stats_02["clip_frac"].item() == 1.0
    assert loss_10.item() == pytest.approx(torch.exp(torch.tensor(-3.0)).item()) and stats_10["clip_frac"].item() == 0


def test_clipping_happens_in_both_directions():
    inp = make_inputs(4, 8, 50, seed=3)
    _, gold_stats, _ = gold_loss(inp)
    assert 0.1 < gold_stats["clip_frac"] < 0.9


def test_without_reference_logprobs_and_with_weighted_mask():
    inp = make_inputs(2, 7, 64, seed=11, with_ref=False, mask_dtype=torch.float32)
    (_, stats, _), _ = check_fp32(inp, loss_agg="seq-mean-token-mean")
    assert stats["kl"] == 0


@pytest.mark.parametrize("B,T,V", [(2, 1, 33), (1, 3, 7), (2, 3, 1000), (1, 2, 151936)])
def test_odd_shapes(B, T, V):
    inp = make_inputs(B, T, V, seed=B * T + V, adv_per_token=T > 1, temperature=0.9, old_noise=1.0)
    check_fp32(inp, temperature=0.9, dual_clip=2.0)


def test_all_masked_rows_and_fully_masked_batch():
    inp = make_inputs(4, 5, 40, seed=5, empty_rows=(0, 2))
    for agg in ("token-mean", "seq-mean-token-mean"):
        check_fp32(inp, loss_agg=agg)
    inp.mask[:] = False
    (loss, stats, grad), _ = check_fp32(inp, loss_agg="seq-mean-token-mean")
    assert loss == 0 and grad.abs().max() == 0 and stats["ratio"] == 0


# Input rounding alone moves a scalar that sums cancelling terms by up to ~this much (relative)
ROUNDING_FLOOR = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
GRAD_STORE = {torch.bfloat16: 1e-2, torch.float16: 1e-3}  # rounding of the stored gradient (max-relative)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_three_ways(dtype):
    """Kernel on bf16/fp16 logits and the plain reference on the same logits, both against the fp32 gold."""
    inp = make_inputs(3, 6, 300, seed=21, temperature=0.8, old_noise=1.0)
    kw = dict(temperature=0.8, dual_clip=2.0, kl_coef=0.1)
    assert dual_clip_active(inp, 2.0, 0.8) > 0
    gold = gold_loss(inp, **kw)
    low = inp.logits.to(dtype)
    ker = run_loss(grpo_loss, inp, low, **kw)
    ref = run_loss(reference.grpo_loss, inp, low, **kw)
    assert ker[2].dtype == dtype
    for name, k_val, r_val, g_val in [("loss", ker[0], ref[0], gold[0]), ("grad", ker[2], ref[2], gold[2])] + [
            (k, ker[1][k], ref[1][k], gold[1][k]) for k in STAT_KEYS]:
        k_err, r_err = rel_err(k_val, g_val), rel_err(r_val, g_val)
        # mean KL is a small difference of log-probs (~0.02 here): input rounding moves it most, relatively
        floor = ROUNDING_FLOOR[dtype] * (4 if name == "kl" else 1)
        assert k_err < 3 * floor, name
        assert k_err <= 2 * r_err + floor, (name, k_err, r_err)  # not much worse than plain PyTorch
    # and on the rounded inputs themselves the kernel is fp32-exact: all its error is the inputs' rounding
    same_input = gold_loss(type(inp)(low.float(), *inp.args()[1:]), **kw)
    assert rel_err(ker[0], same_input[0]) < FP32_TOL
    assert all(rel_err(ker[1][k], same_input[1][k]) < FP32_TOL for k in STAT_KEYS)
    assert rel_err(ker[2], same_input[2]) < GRAD_STORE[dtype]


def test_strided_logits():
    inp = make_inputs(2, 5, 80, seed=9)
    _, _, gold_grad = gold_loss(inp)
    padded = torch.randn(2, 6, 80)
    padded[:, :5] = inp.logits
    x_strided = padded[:, :5].requires_grad_()  # non-contiguous rows, as logits[:, :-1] in a trainer
    loss, _ = grpo_loss(*inp.args(x_strided))
    loss.backward()
    assert rel_err(x_strided.grad, gold_grad) < FP32_TOL


def test_inplace_backward_writes_the_gradient_into_the_logits_buffer():
    inp = make_inputs(2, 5, 80, seed=9)
    _, _, gold_grad = gold_loss(inp)
    base = inp.logits.clone().requires_grad_()
    logits = base * 1.0  # a non-leaf with its own buffer, like the LM head's output
    loss, _ = grpo_loss(*inp.args(logits), inplace_backward=True)
    loss.backward()
    assert rel_err(base.grad, gold_grad) < FP32_TOL
    assert rel_err(logits.detach(), gold_grad) < FP32_TOL  # the logits buffer now holds the gradient


def test_forward_and_backward_never_allocate_a_vocab_sized_intermediate(monkeypatch):
    """Record every tensor our code allocates (Triton's interpreter copies its arguments; those are not ours)."""
    Allocations = allocation_recorder(monkeypatch, record=torch.Tensor.numel)
    B, T, V = 2, 4, 1024
    inp = make_inputs(B, T, V, seed=4)
    for inplace, expected_full in ((False, 1), (True, 0)):
        x = inp.logits.clone().requires_grad_() * 1.0  # non-leaf: no AccumulateGrad copy of the gradient
        with Allocations() as fwd:
            loss, _ = grpo_loss(*inp.args(x), inplace_backward=inplace)
        with Allocations() as bwd:
            torch.autograd.grad(loss, x)  # runs only our backward (x is not a leaf)
        assert fwd.records and max(fwd.records) <= 8 * B * T  # per-token fp32 state only
        assert sum(n >= B * T * V for n in bwd.records) == expected_full  # just the gradient (none in place)
        assert max(n for n in bwd.records if n < B * T * V) <= 8 * B * T


# ------------------------------------------------------------------------------------------ numerical guards
# logp − old and ref − logp planted at loss tokens: inside, near (but not within rounding of) and far beyond the
# default clamps (±20 for both; k3's value cap of 10 binds from d ≈ 2.6 and below d ≈ −11)
LOG_RATIOS = (25.0, -25.0, 19.5, -19.5, 60.0, -300.0, 2.0)
KL_LOG_RATIOS = (30.0, -30.0, 2.0, 2.9, -10.5, -11.5, 19.0)


def planted(B, T, V, *, seed, log_ratios=LOG_RATIOS, kl_log_ratios=KL_LOG_RATIOS, dtype=torch.float32):
    """make_inputs with old = logp − log_ratio and ref = logp + kl_log_ratio at the first loss tokens, logp the
    float64 log-probability of the logits rounded to `dtype` (what the kernel sees)."""
    inp = make_inputs(B, T, V, seed=seed, adv_per_token=True, old_noise=0.3)
    logp = reference.token_logprobs(inp.logits.to(dtype).double(), inp.targets).float()
    b_N, t_N = inp.mask.nonzero(as_tuple=True)
    for i, x in enumerate(log_ratios):
        inp.old[b_N[i], t_N[i]] = logp[b_N[i], t_N[i]] - x
    for i, x in enumerate(kl_log_ratios):
        j = -1 - i  # from the other end, so both kinds of planted tokens are spread over the rows
        inp.ref[b_N[j], t_N[j]] = logp[b_N[j], t_N[j]] + x
    return inp


@pytest.mark.parametrize("B,T,V,kw", [
    (3, 7, 100, dict(kl_coef=0.3)),
    (2, 9, 37, dict(kl_coef=0.3, dual_clip=3.0, loss_agg="token-mean", temperature=0.8)),
    (1, 17, 1000, dict(kl_coef=0.5, log_ratio_clamp=5.0, kl_log_ratio_clamp=3.0, kl_value_clamp=None)),
], ids=["defaults", "dual-clip", "tight-clamps"])
def test_clamped_log_ratios_match_the_float64_reference(B, T, V, kw):
    inp = planted(B, T, V, seed=B * T + V)
    (_, stats, _), _ = check_fp32(inp, **kw)
    unguarded = gold_loss(inp, **kw | dict(log_ratio_clamp=None, kl_log_ratio_clamp=None, kl_value_clamp=None))
    bound = torch.exp(torch.tensor(kw.get("log_ratio_clamp", 20.0)))
    assert stats["ratio"] < bound < 1e-10 * unguarded[1]["ratio"]  # the planted log-ratios are really clamped
    assert 0 < stats["clip_frac"] < 1


def test_without_the_guards_the_kernel_still_matches_where_fp32_can_hold_the_values():
    """The guards off (None) compute the plain formulas; log-ratios of ±25 keep e^25 within fp32."""
    inp = planted(2, 8, 64, seed=3, log_ratios=(25.0, -25.0, 15.0), kl_log_ratios=(25.0, -25.0, 3.0))
    check_fp32(inp, kl_coef=0.3, log_ratio_clamp=None, kl_log_ratio_clamp=None, kl_value_clamp=None)


def test_no_gradient_flows_through_a_binding_clamp():
    """kl_coef 0: tokens whose log-ratio is clamped have exactly zero gradient rows (as torch.clamp gives), so the
    gradient is that of the same batch with those tokens masked out (seq-mean-token-sum: the mask leaves the
    denominator alone)."""
    inp = planted(2, 6, 50, seed=4, log_ratios=(25.0, -25.0, 0.1), kl_log_ratios=())
    kw = dict(kl_coef=0.0, loss_agg="seq-mean-token-sum")
    (_, _, grad), (_, _, gold_grad) = check_fp32(inp, **kw)
    logp = reference.token_logprobs(inp.logits.double(), inp.targets)
    clamped = (logp - inp.old.double()).abs() > 20
    assert int(clamped.sum()) == 2
    assert (grad[clamped] == 0).all() and (gold_grad[clamped] == 0).all()
    without = type(inp)(*inp.args()[:-1], inp.mask & ~clamped)
    assert rel_err(grad, gold_loss(without, **kw)[2]) < FP32_TOL


def test_bf16_logits_beyond_the_clamps():
    """On bf16 logits the kernel equals the float64 reference of those rounded logits (its only error is fp32's)."""
    inp = planted(3, 5, 300, seed=21, dtype=torch.bfloat16)
    kw = dict(kl_coef=0.3, dual_clip=2.0)
    low = inp.logits.to(torch.bfloat16)
    got = run_loss(grpo_loss, inp, low, **kw)
    gold = gold_loss(type(inp)(low.float(), *inp.args()[1:]), **kw)
    assert got[2].dtype == torch.bfloat16
    assert rel_err(got[0], gold[0], floor=1.0) < FP32_TOL
    assert all(rel_err(got[1][k], gold[1][k], floor=1.0) < FP32_TOL for k in STAT_KEYS)
    assert rel_err(got[2], gold[2]) < GRAD_STORE[torch.bfloat16]


@pytest.mark.parametrize("dtype,temperature", [(torch.float32, 1.0), (torch.float32, 0.6), (torch.bfloat16, 1.0)])
def test_token_logprobs(dtype, temperature):
    inp = make_inputs(3, 4, 517, seed=2)
    gold = reference.token_logprobs(inp.logits.double(), inp.targets, temperature=temperature)
    got = token_logprobs(inp.logits.to(dtype), inp.targets, temperature=temperature)
    assert got.dtype == torch.float32 and got.shape == (3, 4)
    tol = FP32_TOL if dtype == torch.float32 else 1.5 * rel_err(
        reference.token_logprobs(inp.logits.to(dtype), inp.targets, temperature=temperature), gold) + 2e-3
    assert rel_err(got, gold) < tol


@pytest.mark.parametrize("kw,needle", [
    (dict(kl_estimator="k4"), "kl_estimator='k4'"),
    (dict(loss_agg="mean"), "loss_agg='mean'"),
    (dict(clip_eps_low=-0.1), "clip_eps_low=-0.1"),
    (dict(dual_clip=1.0), "dual_clip=1.0"),
    (dict(temperature=0.0), "temperature=0.0"),
    (dict(normalizer=0.0), "normalizer=0.0"),
    (dict(norm_length=0), "norm_length=0"),
    (dict(log_ratio_clamp=0.0), "log_ratio_clamp=0.0"),
    (dict(kl_log_ratio_clamp=float("inf")), "kl_log_ratio_clamp=inf"),
    (dict(kl_value_clamp=float("nan")), "kl_value_clamp=nan"),
])
def test_bad_options_name_the_value(kw, needle):
    inp = make_inputs(1, 2, 8, seed=0)
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        grpo_loss(*inp.args(), **kw)


def test_bad_shapes_name_the_argument():
    inp = make_inputs(2, 3, 8, seed=0)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(inp.logits, inp.targets, inp.old, inp.ref, inp.adv[:1], inp.mask)
    with pytest.raises(ValueError, match="old_logprobs"):
        grpo_loss(inp.logits, inp.targets, inp.old[:, :2], inp.ref, inp.adv, inp.mask)
    with pytest.raises(ValueError, match="targets"):
        token_logprobs(inp.logits, inp.targets.float())
