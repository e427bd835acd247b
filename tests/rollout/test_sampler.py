"""The sampler's truncation set, greedy rows, logprobs, batch invariance and seeds, each against an independent
reference (sampling_reference.py in float64, hand-worked values, or the same rows run alone)."""
import pytest
import torch

from r1_megatron import sampling_noise
from r1_megatron.rollout import SamplingBatch, SamplingParams, completion_seeds, request_seeds, sample
from r1_megatron.rollout.sampler import SamplingImpl, truncate_logits, truncation_threshold_B

from .sampling_reference import reference_distribution, reference_logprob

INF = float("inf")


def _i64(values):
    return torch.tensor(values, dtype=torch.int64)


def mixed_rows(B, V, seed=0, dtype=torch.float32):
    """Logits and per-row settings covering greedy, plain, top-k, top-p and both, with big seeds and steps."""
    gen = torch.Generator().manual_seed(seed)
    logits_BV = (torch.randn(B, V, generator=gen) * 3).to(dtype)
    cycle = [(1.0, 0, 1.0), (0.0, 0, 1.0), (0.6, 0, 0.95), (1.0, 5, 1.0), (1.3, 20, 0.9), (0.7, 1, 0.5),
             (0.0, 3, 0.2), (2.0, V + 5, 0.999)]
    rows = [cycle[b % len(cycle)] for b in range(B)]
    return (logits_BV, torch.tensor([r[0] for r in rows]), torch.randint(-2**63, 2**63 - 1, (B,), generator=gen),
            torch.randint(0, 2**40, (B,), generator=gen), _i64([r[1] for r in rows]), torch.tensor([r[2] for r in rows]))


# ------------------------------------------------------------------------------------------ the truncation set

def test_kept_sets_match_the_float64_reference():
    logits_BV, temperature_B, _, _, top_k_B, top_p_B = mixed_rows(64, 50)
    top_p_B[::3] = torch.linspace(0.05, 0.99, top_p_B[::3].numel())
    kept_BV = truncate_logits(logits_BV, temperature_B, top_k_B, top_p_B) > -INF
    for b in range(64):
        # greedy rows keep their truncation set too (computed at T = 1); their token is the argmax either way
        ref = reference_distribution(logits_BV[b], float(temperature_B[b]) or 1.0, int(top_k_B[b]),
                                     float(top_p_B[b])) > 0
        assert torch.equal(kept_BV[b], ref), f"row {b}"


def test_top_k_is_applied_before_top_p():
    # probabilities 0.4, 0.3, 0.2, 0.1: top-k 2 renormalises to 4/7, 3/7, so top-p 0.5 keeps token 0 alone;
    # top-p first would keep tokens 0 and 1 (0.4 < 0.5 <= 0.7)
    logits_1V = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    kept = truncate_logits(logits_1V, torch.ones(1), _i64([2]), torch.tensor([0.5])) > -INF
    assert kept.tolist() == [[True, False, False, False]]


def test_top_p_one_keeps_every_token_even_below_fp32_resolution():
    logits_1V = torch.tensor([[10.0, 0.0, -40.0, -80.0, float("-inf")]])
    kept = truncate_logits(logits_1V, torch.ones(1), None, torch.tensor([1.0])) > -INF
    assert kept.tolist() == [[True, True, True, True, False]]


def test_tiny_top_p_keeps_exactly_the_argmax():
    logits_BV, temperature_B, seeds_B, steps_B, _, _ = mixed_rows(16, 100, seed=1)
    temperature_B = temperature_B.clamp(min=0.5)
    top_p_B = torch.full((16,), 1e-7)
    kept = truncate_logits(logits_BV, temperature_B, None, top_p_B) > -INF
    assert torch.equal(kept.sum(1), torch.ones(16, dtype=torch.int64))
    assert torch.equal(kept.int().argmax(1), logits_BV.argmax(1))
    assert torch.equal(sample(logits_BV, temperature_B, seeds_B, steps_B, None, top_p_B).tokens_B,
                       logits_BV.argmax(1))


@pytest.mark.parametrize("top_k,top_p", [(2, 1.0), (0, 0.7), (0, 0.8), (2, 0.9)])
def test_ties_at_the_boundary_are_all_kept_whatever_their_ids(top_k, top_p):
    # softmax: 0.687, 0.093 x3, 0.034: top-k 2 and the nuclei 0.7 and 0.8 end inside the tie of the 1.0s
    logits_V = torch.tensor([3.0, 1.0, 1.0, 1.0, 0.0])
    for perm in [torch.arange(5), torch.tensor([4, 2, 0, 3, 1]), torch.tensor([1, 3, 4, 0, 2])]:
        kept = truncate_logits(logits_V[perm][None], torch.ones(1), _i64([top_k]), torch.tensor([top_p]))[0] > -INF
        assert kept.tolist() == (logits_V[perm] >= 1.0).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_top_k_alone_takes_a_top_k_and_keeps_the_sorted_sets(dtype):
    """Without top-p the threshold is a topk, not a sort: the same kept sets (bf16 ties included), with and
    without the host's max_top_k."""
    logits_BV = mixed_rows(16, 90, seed=8, dtype=dtype)[0]
    logits_BV[3, 40:] = float("nan")
    top_k_B = _i64([0, 1, 2, 5, 89, 90, 91, 30] * 2)
    by_sort = truncation_threshold_B(logits_BV, torch.ones(16), top_k_B, torch.ones(16))
    for max_top_k in (None, 91):
        tau_B = truncation_threshold_B(logits_BV, torch.ones(16), top_k_B, None, max_top_k)
        assert torch.equal(logits_BV < tau_B[:, None], logits_BV < by_sort[:, None])


@pytest.mark.parametrize("top_k,top_p", [(3, 1.0), (0, 0.5), (200, 1.0), (0, 0.999)])
def test_truncated_rows_follow_the_noise_contract(top_k, top_p):
    """The torch path draws the noise at the kept ids only when few are kept (top-k 3, top-p 0.5) and for the whole
    row otherwise: either way the token is the contract's Gumbel-max over the masked logits."""
    logits_BV, temperature_B, seeds_B, steps_B, _, _ = mixed_rows(16, 300, seed=9)
    top_k_B, top_p_B = _i64([top_k] * 16), torch.full((16,), top_p)
    masked_BV = truncate_logits(logits_BV, temperature_B, top_k_B, top_p_B)
    expected = sampling_noise.gumbel_argmax_partial_torch(masked_BV, temperature_B, seeds_B, steps_B)[1]
    got = sample(logits_BV, temperature_B, seeds_B, steps_B, top_k_B, top_p_B, impl=SamplingImpl.TORCH)
    assert torch.equal(got.tokens_B, expected)


def test_top_k_at_or_above_vocab_size_and_zero_keep_everything():
    logits_BV = torch.randn(3, 7)
    kept = truncate_logits(logits_BV, torch.ones(3), _i64([0, 7, 99]), None) > -INF
    assert kept.all()


# --------------------------------------------------------------------------------------- greedy and logprobs

def test_greedy_rows_are_argmax_with_lowest_id_ties_whatever_top_k_top_p():
    logits_BV, _, seeds_B, steps_B, top_k_B, top_p_B = mixed_rows(8, 300, seed=2)
    logits_BV[3, 17] = logits_BV[3, 250] = logits_BV[3].max() + 1
    out = sample(logits_BV, torch.zeros(8), seeds_B, steps_B, top_k_B, top_p_B)
    assert torch.equal(out.tokens_B, logits_BV.argmax(1)) and out.tokens_B[3].item() == 17


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprobs_are_the_untruncated_temperature_scaled_log_softmax(dtype):
    logits_BV, temperature_B, seeds_B, steps_B, top_k_B, top_p_B = mixed_rows(32, 1000, seed=3, dtype=dtype)
    out = sample(logits_BV, temperature_B, seeds_B, steps_B, top_k_B, top_p_B)
    assert out.tokens_B.dtype == torch.int64 and out.logprobs_B.dtype == torch.float32
    # the logits the model produced (bf16 values are exact in float64), not any fp32 original
    ref = torch.tensor([reference_logprob(logits_BV[b], float(temperature_B[b]), int(out.tokens_B[b]))
                        for b in range(32)], dtype=torch.float64)
    torch.testing.assert_close(out.logprobs_B.double(), ref, rtol=0, atol=1e-6)
    truncated_rows = (top_k_B > 0) & (top_k_B < 1000) | (top_p_B < 1)
    sampled_rows = temperature_B > 0
    # before truncation: a truncated row's logprob is below log(1) of its renormalised distribution
    assert (out.logprobs_B[truncated_rows & sampled_rows] < 0).all()


# ------------------------------------------------------------------------------------------ reproducibility

def test_same_seed_and_step_same_token_whatever_the_batch():
    logits_BV, temperature_B, seeds_B, steps_B, top_k_B, top_p_B = mixed_rows(16, 1000, seed=4)
    cols = (logits_BV, temperature_B, seeds_B, steps_B, top_k_B, top_p_B)
    full = sample(*cols)
    perm = torch.tensor([9, 3, 14, 0, 7])
    others = mixed_rows(6, 1000, seed=5)
    mixed = sample(*[torch.cat([o, c[perm]]) for c, o in zip(cols, others)])
    assert torch.equal(mixed.tokens_B[6:], full.tokens_B[perm])
    assert torch.equal(mixed.logprobs_B[6:], full.logprobs_B[perm])
    for b in range(16):  # each row alone, with its own settings
        alone = sample(*[c[b:b + 1] for c in cols])
        assert alone.tokens_B.item() == full.tokens_B[b].item()
        assert alone.logprobs_B.item() == full.logprobs_B[b].item()
    assert torch.equal(sample(*cols).tokens_B, full.tokens_B)  # and in a second run


def test_untruncated_rows_follow_the_noise_contract():
    logits_BV, temperature_B, seeds_B, steps_B, _, _ = mixed_rows(8, 1001, seed=6)
    expected = sampling_noise.gumbel_argmax(logits_BV, temperature_B, seeds_B, steps_B)
    assert torch.equal(sample(logits_BV, temperature_B, seeds_B, steps_B).tokens_B, expected)
    switched_off = sample(logits_BV, temperature_B, seeds_B, steps_B, _i64([0] * 8), torch.ones(8))
    assert torch.equal(switched_off.tokens_B, expected)


# ------------------------------------------------------------------------------------------------ seeds

def test_completion_seeds_are_the_splitmix64_stream():
    # SplitMix64 seeded with 0 (Vigna's splitmix64.c): e220a8397b1dcdaf 6e789e6aa1b965f4 06c45d188009454f
    expected = [0xE220A8397B1DCDAF - 2**64, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert completion_seeds(0, 3) == expected
    assert completion_seeds(-5, 2) == completion_seeds(-5, 7)[:2]  # completion j does not depend on n
    assert len(set(completion_seeds(1, 64)) | set(completion_seeds(2, 64))) == 128
    with pytest.raises(ValueError, match="int64"):
        completion_seeds(2**63, 1)


def test_request_seeds_draw_from_the_generator_only_when_unseeded():
    gen = torch.Generator().manual_seed(7)
    state = gen.get_state()
    assert request_seeds(SamplingParams(n=3, seed=42), gen) == completion_seeds(42, 3)
    assert torch.equal(gen.get_state(), state)  # a seeded request leaves the engine's generator alone
    first, second = request_seeds(SamplingParams(n=2), gen), request_seeds(SamplingParams(n=2), gen)
    assert first != second and len(set(first)) == 2
    again = torch.Generator().manual_seed(7)
    assert [request_seeds(SamplingParams(n=2), again) for _ in range(2)] == [first, second]


# ------------------------------------------------------------------------------------------ SamplingBatch

def test_sampling_batch_from_rows_matches_explicit_tensors():
    params = [SamplingParams(temperature=0.6, top_p=0.95), SamplingParams(temperature=0), SamplingParams(top_k=4)]
    seeds, steps = [5, -6, 2**62], [0, 3, 2**35]
    batch = SamplingBatch.from_rows(params, seeds, steps)
    logits_BV = torch.randn(3, 40)
    explicit = sample(logits_BV, torch.tensor([0.6, 0.0, 1.0]), _i64(seeds), _i64(steps), _i64([0, 0, 4]),
                      torch.tensor([0.95, 1.0, 1.0]))
    got = batch.sample(logits_BV)
    assert torch.equal(got.tokens_B, explicit.tokens_B) and torch.equal(got.logprobs_B, explicit.logprobs_B)
    assert batch.params == tuple(params) and batch.max_top_k == 4
    plain = SamplingBatch.from_rows([SamplingParams(), SamplingParams(temperature=0)], [1, 2], [0, 0])
    assert plain.top_k_B is None and plain.top_p_B is None  # no row truncates: the sort is skipped
    with pytest.raises(ValueError, match="one entry per row"):
        SamplingBatch.from_rows(params, seeds[:2], steps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_all_greedy_batch_takes_the_argmax_shortcut_with_the_general_rule(dtype):
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0, top_k=2, top_p=0.3)] * 3
    batch = SamplingBatch.from_rows(params, [1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5])
    assert batch.all_greedy and not SamplingBatch.from_rows(params + [SamplingParams()], [0] * 7, [0] * 7).all_greedy
    logits_BV = torch.randn(6, 33, generator=torch.Generator().manual_seed(3)).to(dtype)
    logits_BV[1, [4, 9]] = 50.0  # a tie: the lowest id wins
    logits_BV[2, 7] = float("nan")  # a NaN wins, as in the general rule
    got = batch.sample(logits_BV)
    general = sample(logits_BV, batch.temperature_B, batch.seeds_B, batch.steps_B, batch.top_k_B, batch.top_p_B)
    assert got.tokens_B[1] == 4 and got.tokens_B[2] == 7
    assert torch.equal(got.tokens_B, general.tokens_B)
    torch.testing.assert_close(got.logprobs_B, general.logprobs_B, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("bad,match", [
    (dict(top_k_B=_i64([1, 2, 3])), "top_k_B must be an integer tensor of shape"),
    (dict(top_k_B=torch.ones(2)), "top_k_B must be an integer tensor"),
    (dict(top_k_B=_i64([1, -1])), r"top_k_B must be >= 0"),
    (dict(top_p_B=_i64([1, 1])), "top_p_B must be a float tensor"),
    (dict(top_p_B=torch.tensor([0.0, 0.5])), r"top_p_B must be in \(0, 1\]"),
    (dict(top_p_B=torch.tensor([0.5, 1.5])), r"top_p_B must be in \(0, 1\]"),
    (dict(temperature_B=torch.tensor([1.0, -1.0])), "temperature_B must be >= 0"),
    (dict(seeds_B=torch.zeros(2)), "seeds_B"),
])
def test_bad_inputs_raise_value_errors(bad, match):
    args = dict(logits_BV=torch.zeros(2, 5), temperature_B=torch.ones(2), seeds_B=_i64([1, 2]),
                steps_B=_i64([0, 0]), top_k_B=None, top_p_B=None)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        sample(**args)
