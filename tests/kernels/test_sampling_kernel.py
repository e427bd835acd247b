"""Triton fused sampling (interpreted) against the torch path: the same tokens (the in-kernel Philox noise is the
contract's bit for bit), logprobs against a float64 log_softmax, vocab-range partials, NaN and tie rules, and the
wiring into rollout.sampler."""
import math

import pytest
import torch

from r1_megatron import sampling_noise
from r1_megatron.kernels import Backend, reference, sampling, select_backend
from r1_megatron.rollout import SamplingBatch, SamplingParams, sample
from r1_megatron.rollout.sampler import SamplingImpl, _resolved_impl, truncation_threshold_B

TRITON, TORCH = Backend.TRITON, Backend.TORCH
NAN = float("nan")


@pytest.fixture(autouse=True)
def _triton_path():
    assert select_backend(torch.zeros(1)) is Backend.TRITON


def _rows(B, V, seed, dtype=torch.float32):
    """Logits of scale 3, a temperature mix with greedy rows, int64 seeds and steps beyond 2^32."""
    g = torch.Generator().manual_seed(seed)
    logits_BV = (3 * torch.randn(B, V, generator=g)).to(dtype)
    temperature_B = torch.tensor([1.0, 0.0, 0.7, 2.0, 0.0, 1.3, 0.25, 1.0])[torch.arange(B) % 8]
    seeds_B = torch.randint(-2**63, 2**63 - 1, (B,), generator=g)
    steps_B = torch.randint(0, 2**40, (B,), generator=g)
    return logits_BV, temperature_B, seeds_B, steps_B


def _gold_logprobs(logits_BV, temperature_B, tokens_B):
    scaled_BV = logits_BV.double() / reference.scoring_temperature(temperature_B).double()[:, None]
    return torch.log_softmax(scaled_BV, dim=1).gather(1, tokens_B[:, None])[:, 0]


def _taus(logits_BV):
    """Per-row thresholds: keep-all (-inf), a mid logit, the max (keeps the argmax ties only), a low logit."""
    sorted_BV = logits_BV.sort(dim=1, descending=True).values
    pick_B = torch.tensor([0, 3, 0, 1, 7, 2, 5, 4])[torch.arange(logits_BV.shape[0]) % 8] % logits_BV.shape[1]
    tau_B = sorted_BV.gather(1, pick_B[:, None])[:, 0]
    tau_B[0] = float("-inf")
    return tau_B


@pytest.mark.parametrize("V", [1, 7, 1000, 50257])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("truncated", [False, True])
def test_tokens_equal_the_torch_path_and_logprobs_the_float64_log_softmax(V, dtype, truncated):
    logits_BV, temperature_B, seeds_B, steps_B = _rows(8 if V < 50000 else 4, V, seed=V, dtype=dtype)
    tau_B = _taus(logits_BV) if truncated else None
    tokens_B, logprobs_B = sampling.sample_tokens(logits_BV, temperature_B, seeds_B, steps_B, tau_B, backend=TRITON)
    ref_tokens_B, ref_logprobs_B = sampling.sample_tokens(logits_BV, temperature_B, seeds_B, steps_B, tau_B,
                                                          backend=TORCH)
    assert tokens_B.dtype == torch.int64 and logprobs_B.dtype == torch.float32
    assert torch.equal(tokens_B, ref_tokens_B)
    gold_B = _gold_logprobs(logits_BV, temperature_B, tokens_B)
    # the kernel's error is ~1 ulp of log Z; torch's fp32 log_softmax, the reference, is itself off by up to 5e-6
    torch.testing.assert_close(logprobs_B.double(), gold_B, rtol=0, atol=2e-6)
    torch.testing.assert_close(logprobs_B, ref_logprobs_B, rtol=0, atol=1e-5)
    if truncated:
        assert (logits_BV.gather(1, tokens_B[:, None])[:, 0].float() >= tau_B.float()).all()


def test_sampler_runs_the_kernel_on_real_top_k_top_p_thresholds():
    params = [SamplingParams(temperature=0.6, top_p=0.95), SamplingParams(temperature=0), SamplingParams(top_k=5),
              SamplingParams(temperature=1.3, top_k=20, top_p=0.8), SamplingParams(), SamplingParams(top_p=0.3)]
    batch = SamplingBatch.from_rows(params, [11, -12, 2**62, 7, 0, -1], [0, 5, 2**33, 9, 1, 2])
    logits_BV = _rows(6, 3001, seed=1, dtype=torch.bfloat16)[0]
    assert _resolved_impl(SamplingImpl.AUTO, logits_BV) is SamplingImpl.TRITON  # the interpreter counts as Triton
    fused, torch_path = batch.sample(logits_BV), batch.sample(logits_BV, SamplingImpl.TORCH)
    assert torch.equal(fused.tokens_B, torch_path.tokens_B)
    torch.testing.assert_close(fused.logprobs_B, torch_path.logprobs_B, rtol=0, atol=1e-5)
    greedy = SamplingBatch.from_rows([SamplingParams(temperature=0, top_k=3)] * 2, [1, 2], [0, 0])
    assert torch.equal(greedy.sample(logits_BV[:2]).tokens_B, logits_BV[:2].argmax(1))


def test_nan_wins_at_the_lowest_id_and_poisons_the_logprob():
    logits_BV, temperature_B, seeds_B, steps_B = _rows(4, 3000, seed=2)
    logits_BV[0, [2900, 1700]] = NAN  # two NaNs in different splits of a sampled row: the lower id wins
    logits_BV[1, 5] = NAN  # a greedy row
    logits_BV[2, 0] = NAN  # masked by no threshold: `logit < tau` is false for NaN
    tau_B = torch.tensor([0.0, 0.0, 50.0, float("-inf")])
    tokens_B, logprobs_B = sampling.sample_tokens(logits_BV, temperature_B, seeds_B, steps_B, tau_B, backend=TRITON)
    assert tokens_B[:3].tolist() == [1700, 5, 0]
    assert logprobs_B[:3].isnan().all() and not logprobs_B[3].isnan()
    assert torch.equal(tokens_B, reference.sample_tokens(logits_BV, temperature_B, seeds_B, steps_B, tau_B)[0])


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_greedy_ties_go_to_the_lowest_id_across_chunks_and_splits():
    logits_BV = torch.randn(2, 4001, generator=torch.Generator().manual_seed(3))
    logits_BV[:, [3999, 2100, 17]] = 9.0
    logits_BV[1, :] = float("-inf")  # every score -inf: torch.argmax gives id 0 (log Z = log 0, numpy warns)
    zeros_B = torch.zeros(2, dtype=torch.int64)
    tokens_B, logprobs_B = sampling.sample_tokens(logits_BV, torch.zeros(2), zeros_B, zeros_B, backend=TRITON)
    assert tokens_B.tolist() == [17, 0]
    assert math.isclose(logprobs_B[0].item(), _gold_logprobs(logits_BV[:1], torch.zeros(1), tokens_B[:1]).item(),
                        abs_tol=1e-6)


@pytest.mark.parametrize("cuts,padding", [([0, 503, 1001], 0), ([0, 4, 500, 1001], 3), ([0, 336, 672, 1001], 6)])
def test_vocab_range_partials_combine_to_the_full_vocabulary_sample(cuts, padding):
    """Shards (unaligned starts, Megatron padding columns full of huge logits that must not be read, an empty
    shard) folded by either combine give the full-vocabulary token and logprob."""
    logits_BV, temperature_B, seeds_B, steps_B = _rows(8, 1001, seed=4)
    tau_B = _taus(logits_BV)
    full = sampling.sample_tokens(logits_BV, temperature_B, seeds_B, steps_B, tau_B, backend=TORCH)
    shards = []
    for lo, hi in zip(cuts[:-1] + [1001], cuts[1:] + [1001]):  # the last one is empty
        local_BV = torch.cat([logits_BV[:, lo:hi], torch.full((8, padding + 1), 1e4)], dim=1)
        shards.append(sampling.sampling_partials(local_BV, temperature_B, seeds_B, steps_B, tau_B, lo, hi,
                                                 backend=TRITON))
    partials_BN5 = torch.cat(shards, dim=1)
    assert partials_BN5.dtype == torch.float64 and partials_BN5.shape[2] == 5
    for backend in (TRITON, TORCH):
        tokens_B, logprobs_B = sampling.combine_sampling_partials(partials_BN5.flip(1), backend=backend)
        assert torch.equal(tokens_B, full[0]), backend
        torch.testing.assert_close(logprobs_B.double(), _gold_logprobs(logits_BV, temperature_B, tokens_B),
                                   rtol=0, atol=2e-6)


def test_triton_and_reference_partials_agree_column_by_column():
    logits_BV, temperature_B, seeds_B, steps_B = _rows(8, 777, seed=5, dtype=torch.bfloat16)
    args = (logits_BV[:, 100:], temperature_B, seeds_B, steps_B, _taus(logits_BV[:, 100:]), 100, 777)
    ref_B15 = sampling.sampling_partials(*args, backend=TORCH)
    got_BS5 = sampling.sampling_partials(*args, backend=TRITON)
    assert got_BS5.shape[1] == 2  # two vocab splits under the interpreter: their fold is under test too
    tokens_B = sampling.combine_sampling_partials(got_BS5, backend=TORCH)[0]
    assert torch.equal(tokens_B.double(), ref_B15[:, 0, 1])
    winner_B = (got_BS5[:, :, 1] == ref_B15[:, :, 1]).int().argmax(1)
    for col in (0, 4):  # its score and logits/T are the same fp32 numbers
        assert torch.equal(got_BS5[torch.arange(8), winner_B, col], ref_B15[:, 0, col])


def test_combine_kernel_matches_the_reference_on_adversarial_partials():
    g = torch.Generator().manual_seed(6)
    partials_BN5 = torch.stack([torch.randn(5, 9, generator=g), torch.randint(0, 90, (5, 9), generator=g).double(),
                                torch.randn(5, 9, generator=g), torch.rand(5, 9, generator=g) + 0.5,
                                torch.randn(5, 9, generator=g)], dim=2).double()
    partials_BN5[0, 3, 0] = partials_BN5[0, 5, 0] = 7.0  # a score tie: the lower id wins
    partials_BN5[0, [3, 5], 1] = torch.tensor([40.0, 12.0], dtype=torch.float64)
    partials_BN5[1, [2, 6], 0] = NAN  # two NaN winners: the lower id
    partials_BN5[2, :, 0] = float("-inf")  # nothing but -inf scores
    partials_BN5[3, 4] = torch.tensor([float("-inf"), reference.NO_TOKEN, reference.LOGSUMEXP_FLOOR, 0, 0.0],
                                      dtype=torch.float64)
    got = sampling.combine_sampling_partials(partials_BN5, backend=TRITON)
    ref = sampling.combine_sampling_partials(partials_BN5, backend=TORCH)
    assert torch.equal(got[0], ref[0]) and got[0][0] == 12
    assert got[0][1] == min(partials_BN5[1, 2, 1], partials_BN5[1, 6, 1])
    torch.testing.assert_close(got[1], ref[1], rtol=1e-6, atol=1e-6)


def test_strided_logits_and_an_empty_batch():
    logits_BV, temperature_B, seeds_B, steps_B = _rows(3, 300, seed=7)
    strided_BV = torch.cat([logits_BV, logits_BV[:, :9]], dim=1)[:, :300]
    got = sampling.sample_tokens(strided_BV, temperature_B, seeds_B, steps_B, backend=TRITON)
    assert torch.equal(got[0], reference.sample_tokens(logits_BV, temperature_B, seeds_B, steps_B)[0])
    empty = sampling.sample_tokens(torch.zeros(0, 5), torch.zeros(0), seeds_B[:0], steps_B[:0], backend=TRITON)
    assert empty[0].shape == (0,) and empty[1].shape == (0,)


def test_gumbel_argmax_partial_triton_impl_equals_torch():
    logits_BV, temperature_B, seeds_B, steps_B = _rows(8, 1001, seed=8)
    got = sampling_noise.gumbel_argmax_partial(logits_BV[:, 3:], temperature_B, seeds_B, steps_B, 3,
                                               impl=SamplingImpl.TRITON)
    ref = sampling_noise.gumbel_argmax_partial_torch(logits_BV[:, 3:], temperature_B, seeds_B, steps_B, 3)
    assert torch.equal(got[1], ref[1]) and torch.equal(got[0], ref[0])


@pytest.mark.parametrize("bad,match", [
    (dict(tau_B=torch.zeros(3)), "tau_B"),
    (dict(tau_B=torch.zeros(2, dtype=torch.int64)), "tau_B"),
    (dict(seeds_B=torch.zeros(2)), "seeds_B"),
    (dict(logits_BV=torch.zeros(2, 4, dtype=torch.int64)), "logits_BV"),
])
def test_bad_inputs_raise_value_errors(bad, match):
    args = dict(logits_BV=torch.zeros(2, 4), temperature_B=torch.ones(2), seeds_B=torch.zeros(2, dtype=torch.int64),
                steps_B=torch.zeros(2, dtype=torch.int64), tau_B=None)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        sampling.sample_tokens(**args)
    with pytest.raises(ValueError, match=r"more ids than logits_BV has columns"):
        sampling.sampling_partials(torch.zeros(2, 4), torch.ones(2), args["steps_B"], args["steps_B"], None, 0, 5)
    with pytest.raises(ValueError, match="partials_BN5"):
        sampling.combine_sampling_partials(torch.zeros(2, 0, 5))


def test_thresholds_from_the_sampler_feed_the_kernel():
    """truncation_threshold_B's τ (logits' dtype) and the kernel agree with the masked-logits formulation."""
    logits_BV, temperature_B, seeds_B, steps_B = _rows(8, 500, seed=9, dtype=torch.bfloat16)
    tau_B = truncation_threshold_B(logits_BV, temperature_B, torch.full((8,), 10), torch.full((8,), 0.9))
    masked_BV = logits_BV.masked_fill(logits_BV < tau_B[:, None], float("-inf"))
    expected_B = sampling_noise.gumbel_argmax_partial_torch(masked_BV, temperature_B, seeds_B, steps_B)[1]
    assert torch.equal(sample(logits_BV, temperature_B, seeds_B, steps_B, torch.full((8,), 10),
                              torch.full((8,), 0.9), impl=SamplingImpl.TRITON).tokens_B, expected_B)
