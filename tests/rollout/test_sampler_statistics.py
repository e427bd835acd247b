"""Empirical token frequencies of the sampler match the exact truncated distribution (chi-square, fixed seeds)."""
import math

import pytest
import torch

from r1_megatron.rollout.sampler import sample

from .sampling_reference import reference_distribution

LOGITS_V = torch.tensor([0.5, 2.0, -1.0, 1.0, -3.0, 1.5, 0.0, -0.5])
N_DRAWS = 20000
P_REJECT = 1e-3


def chi2_sf(x: float, df: int) -> float:
    """P(chi2_df > x), closed forms for integer df (Abramowitz & Stegun 26.4.4 / 26.4.5)."""
    if df % 2 == 0:
        return math.exp(-x / 2) * sum((x / 2) ** i / math.factorial(i) for i in range(df // 2))
    term, series = math.sqrt(2 * x / math.pi), 0.0
    for i in range(1, (df + 1) // 2):
        series += term
        term *= x / (2 * i + 1)
    return math.erfc(math.sqrt(x / 2)) + math.exp(-x / 2) * series


def test_chi2_sf_matches_tabulated_critical_values():
    for df, crit in [(1, 10.828), (2, 13.816), (3, 16.266), (4, 18.467), (5, 20.515), (7, 24.322)]:
        assert abs(chi2_sf(crit, df) - 1e-3) < 2e-6


def draw(temperature, top_k, top_p, vary="step", seed=1234):
    """N_DRAWS samples of LOGITS_V, each with its own step (or its own seed at step 0): bincount [V]."""
    n = N_DRAWS
    if vary == "step":
        seeds_B, steps_B = torch.full((n,), seed, dtype=torch.int64), torch.arange(n)
    else:
        seeds_B, steps_B = torch.arange(n) * 7919 + seed, torch.zeros(n, dtype=torch.int64)
    out = sample(LOGITS_V.expand(n, -1), torch.full((n,), temperature), seeds_B, steps_B,
                 torch.full((n,), top_k), torch.full((n,), top_p))
    return torch.bincount(out.tokens_B, minlength=LOGITS_V.numel()).double()


def goodness_of_fit(counts, probs):
    """(p-value, counts outside the support): Pearson's chi-square over the cells with probability > 0."""
    support = probs > 0
    expected = N_DRAWS * probs[support]
    assert expected.min() >= 5, "chi-square needs >= 5 expected draws per cell"
    stat = ((counts[support] - expected) ** 2 / expected).sum().item()
    return chi2_sf(stat, int(support.sum()) - 1), counts[~support].sum().item()


@pytest.mark.parametrize("temperature,top_k,top_p,vary,support", [
    (1.0, 0, 1.0, "step", 8),
    (1.0, 0, 1.0, "seed", 8),
    (0.6, 0, 0.95, "step", 4),  # the R1 evaluation setting
    (1.0, 3, 1.0, "step", 3),
    (1.3, 0, 1.0, "seed", 8),
    (1.3, 5, 0.8, "step", 3),
    (0.6, 3, 0.95, "step", 3),
])
def test_frequencies_match_the_truncated_distribution(temperature, top_k, top_p, vary, support):
    probs = reference_distribution(LOGITS_V, temperature, top_k, top_p)
    assert int((probs > 0).sum()) == support  # the combination truncates as intended
    p_value, outside = goodness_of_fit(draw(temperature, top_k, top_p, vary), probs)
    assert outside == 0
    assert p_value > P_REJECT, f"p = {p_value:.2e}"


@pytest.mark.parametrize("sampled,wrong", [
    ((0.6, 0, 0.95), (0.8, 0, 0.95)),  # temperature
    ((1.3, 0, 1.0), (1.0, 0, 1.0)),  # temperature
    ((1.0, 3, 1.0), (1.0, 4, 1.0)),  # top-k
    ((1.0, 0, 0.8), (1.0, 0, 1.0)),  # top-p
])
def test_the_test_rejects_a_wrong_distribution(sampled, wrong):
    counts = draw(*sampled)
    p_value, outside = goodness_of_fit(counts, reference_distribution(LOGITS_V, *wrong))
    assert outside > 0 or p_value < 1e-6


def test_different_seeds_give_different_draws():
    n, flat = 400, torch.zeros(1, 16).expand(400, -1)
    steps = torch.arange(n)
    a = sample(flat, torch.ones(n), torch.full((n,), 11, dtype=torch.int64), steps).tokens_B
    b = sample(flat, torch.ones(n), torch.full((n,), 12, dtype=torch.int64), steps).tokens_B
    agree = (a == b).double().mean().item()
    assert abs(agree - 1 / 16) < 0.05  # independent uniform draws agree 1/16 of the time
