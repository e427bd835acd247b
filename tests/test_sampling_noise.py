"""Seeded Gumbel-max sampling: Philox known answers, the uniform/Gumbel statistics, reproducibility across batch
composition and vocab slicing, the csrc/ arithmetic compiled for the host and, on a GPU build, the CUDA kernel.
"""
import ctypes
import json
import math
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
import torch

from r1_megatron import sampling_noise as sn
from tests.bench_scripts import load_bench

REPO = pathlib.Path(__file__).resolve().parents[1]

# Random123 known-answer vectors, `tests/kat_vectors` of https://github.com/DEShawResearch/random123 (the
# "philox4x32 7" and "philox4x32 10" lines; columns: counter[4], key[2], expected output[4], hex uint32).
PHILOX_KAT = [
    (10, [0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    (10, [0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    (10, [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
    (7, [0, 0, 0, 0], [0, 0], [0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48]),
    (7, [0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662]),
    (7, [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A]),
]


def _i64(values):
    return torch.tensor(values, dtype=torch.int64)


def _batch(B, V, seed=0, dtype=torch.float32):
    """Random logits, a temperature mix with greedy rows, and per-row seeds/steps (some past 2^32)."""
    gen = torch.Generator().manual_seed(seed)
    logits_BV = (torch.randn(B, V, generator=gen) * 2).to(dtype)
    temperature_B = torch.tensor([1.0, 0.5, 0.0, 2.0, 1.3, 0.0, 0.9, 1.0][:B] * (B // 8 + 1))[:B]
    seeds_B = torch.randint(-2**62, 2**62, (B,), generator=gen)
    steps_B = torch.randint(0, 2**40, (B,), generator=gen)
    return logits_BV, temperature_B, seeds_B, steps_B


# --------------------------------------------------------------------------------------------- Philox in torch

@pytest.mark.parametrize("rounds,counter,key,expected", PHILOX_KAT)
def test_philox_known_answers(rounds, counter, key, expected):
    words = sn.philox4x32(tuple(_i64([c]) for c in counter), tuple(_i64([k]) for k in key), rounds)
    assert [int(w) for w in words] == expected


def test_philox_is_vectorised_over_broadcast_counters():
    ctr = (_i64([0, 0xFFFFFFFF, 0x243F6A88]), _i64([0, 0xFFFFFFFF, 0x85A308D3]),
           _i64([0, 0xFFFFFFFF, 0x13198A2E]), _i64([0, 0xFFFFFFFF, 0x03707344]))


    key = (_i64([0, 0xFFFFFFFF, 0xA4093822]), _i64([0, 0xFFFFFFFF, 0x299F31D0]))
    words = torch.stack(sn.philox4x32(ctr, key), dim=1)
    assert words.tolist() == [kat[3] for kat in PHILOX_KAT[:3]]


def test_noise_words_follow_the_documented_counter_layout():
    seed, step = -0x123456789ABCDEF, (7 << 32) + 99
    bits = sn.philox_bits(_i64([seed]), _i64([step]), 0, 12)[0]
    key = (_i64([seed & 0xFFFFFFFF]), _i64([(seed >> 32) & 0xFFFFFFFF]))
    for v in range(12):
        ctr = (_i64([v >> 2]), _i64([99]), _i64([7]), _i64([0]))
        assert int(bits[v]) == int(sn.philox4x32(ctr, key)[v & 3])


def test_cpu_uint64_product_and_the_int64_split_agree():
    """The CPU path multiplies in uint64; other devices (torch has no CUDA uint64 multiply) split the constant."""
    x = torch.cat([_i64([0, 1, 0xFFFFFFFF, 0x80000000]), torch.randint(0, 2**32, (4096,))])
    for m in sn.PHILOX_M:
        hi, lo = sn._mulhilo32(m, x.clone())
        split_hi, split_lo = sn._mulhilo32_split(m, x)
        assert torch.equal(hi & sn.MASK32, split_hi) and torch.equal(lo, split_lo)
        assert [(int(h) << 32) + int(lo_) for h, lo_ in zip(split_hi[:4], split_lo[:4])] == [m * int(v) for v in x[:4]]


# ------------------------------------------------------------------------------------------ uniforms and noise

def test_uniform_conversion_is_exact_and_open():
    x = _i64([0, 1, 511, 512, 2**31, 2**32 - 1])
    u = sn.uniform_from_bits(x)
    assert u.dtype == torch.float32
    assert u.tolist() == [2.0**-24, 2.0**-24, 2.0**-24, 3 * 2.0**-24, 0.5 + 2.0**-24, 1 - 2.0**-24]
    assert 0 < u.min() and u.max() < 1


def test_uniforms_are_uniform_ks():
    u = sn.philox_uniform(torch.arange(64), torch.arange(64) * 3, 0, 4096).flatten().double()
    assert 0 < u.min() and u.max() < 1
    n = u.numel()
    ecdf_hi = torch.arange(1, n + 1, dtype=torch.float64) / n
    u_sorted = u.sort().values
    d = torch.maximum(ecdf_hi - u_sorted, u_sorted - (ecdf_hi - 1 / n)).max().item()
    assert d < 1.95 / math.sqrt(n), f"KS statistic {d:.2e} over n={n}"  # p = 0.001
    # the 4 words of one Philox call feed neighbouring ids: they must not be correlated
    pairs = u.view(-1, 2)
    assert abs(torch.corrcoef(pairs.T)[0, 1].item()) < 0.005


def test_gumbel_noise_moments():
    g = sn.gumbel_noise(torch.arange(32), torch.zeros(32, dtype=torch.int64), 0, 8192).double()
    assert g.isfinite().all()
    assert abs(g.mean().item() - 0.5772156649) < 0.01  # Euler-Mascheroni
    assert abs(g.var().item() - math.pi**2 / 6) < 0.03


def test_noise_slice_equals_full_noise_columns():
    seeds_B, steps_B = _i64([3, -9, 2**40]), _i64([0, 5, 2**33])
    full = sn.gumbel_noise(seeds_B, steps_B, 0, 1001)
    for start, end in [(0, 1), (1, 2), (3, 9), (503, 1001), (998, 1001), (4, 8)]:
        assert torch.equal(sn.gumbel_noise(seeds_B, steps_B, start, end), full[:, start:end])


def test_noise_at_single_ids_equals_the_full_noise():
    seeds_B, steps_B = _i64([3, -9, 2**40]), _i64([0, 5, 2**33])
    full = sn.gumbel_noise(seeds_B, steps_B, 0, 1001)
    rows_N, ids_N = _i64([0, 0, 1, 2, 2, 1]), _i64([0, 1000, 3, 4, 997, 998])
    assert torch.equal(sn.gumbel_noise_at(seeds_B[rows_N], steps_B[rows_N], ids_N), full[rows_N, ids_N])


@pytest.mark.parametrize("other_seed,other_step", [(5, 1), (6, 0), (5 + 2**32, 0), (5, 2**32)])
def test_different_seed_or_step_gives_different_noise(other_seed, other_step):
    base = sn.gumbel_noise(_i64([5]), _i64([0]), 0, 4096)
    other = sn.gumbel_noise(_i64([other_seed]), _i64([other_step]), 0, 4096)
    assert (base == other).float().mean() < 0.01


# ------------------------------------------------------------------------------------------ Gumbel-max sampling

@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sample_frequencies_match_softmax_chi_square(temperature):
    logits_V = torch.tensor([1.0, 0.5, 0.0, -0.5, 2.0, -1.0])
    n = 20000
    tokens = sn.gumbel_argmax(logits_V.expand(n, -1), torch.full((n,), temperature),
                              torch.full((n,), 1234, dtype=torch.int64), torch.arange(n))
    counts = torch.bincount(tokens, minlength=6).double()

    def chi2(probs):
        expected = n * probs.double()
        return ((counts - expected) ** 2 / expected).sum().item()

    assert chi2(torch.softmax(logits_V / temperature, 0)) < 20.52  # df = 5, p = 0.001
    assert chi2(torch.softmax(logits_V / (temperature * 1.5), 0)) > 20.52  # the test can tell temperatures apart


def test_same_seed_and_step_same_token_regardless_of_batch():
    logits_BV, temperature_B, seeds_B, steps_B = _batch(8, 1001)
    score_B, token_B = sn.gumbel_argmax_partial(logits_BV, temperature_B, seeds_B, steps_B)
    perm = torch.tensor([5, 2, 7, 0])
    other_logits, other_t, other_seeds, other_steps = _batch(3, 1001, seed=1)
    mixed = [torch.cat([a[perm], b]) for a, b in
             zip((logits_BV, temperature_B, seeds_B, steps_B), (other_logits, other_t, other_seeds, other_steps))]
    mixed_score, mixed_token = sn.gumbel_argmax_partial(*mixed)
    assert torch.equal(mixed_token[:4], token_B[perm])
    assert torch.equal(mixed_score[:4], score_B[perm])
    single = sn.gumbel_argmax(logits_BV[3:4], temperature_B[3:4], seeds_B[3:4], steps_B[3:4])
    assert single.item() == token_B[3].item()


@pytest.mark.parametrize("cuts", [[0, 503, 1001], [0, 250, 251, 777, 1001], [0, 4, 1001]])
def test_vocab_shards_combine_to_the_full_vocab_token(cuts):
    logits_BV, temperature_B, seeds_B, steps_B = _batch(8, 1001, seed=2)
    full_score, full_token = sn.gumbel_argmax_partial(logits_BV, temperature_B, seeds_B, steps_B)
    parts = [sn.gumbel_argmax_partial(logits_BV[:, lo:hi], temperature_B, seeds_B, steps_B, vocab_start=lo)
             for lo, hi in zip(cuts[:-1], cuts[1:])]
    score_PB = torch.stack([p[0] for p in parts])
    token_PB = torch.stack([p[1] for p in parts])
    assert torch.equal(sn.combine_vocab_shards(score_PB, token_PB), full_token)
    assert torch.equal(score_PB.gather(0, (token_PB == full_token).int().argmax(0)[None])[0], full_score)


def test_combine_breaks_ties_by_lowest_global_id_and_prefers_nan():
    score_PB = torch.tensor([[1.0, 2.0, float("nan"), -math.inf], [1.0, 3.0, 5.0, -math.inf]])
    token_PB = _i64([[40, 1, 7, 9], [3, 50, 60, 2]])
    assert sn.combine_vocab_shards(score_PB, token_PB).tolist() == [3, 50, 7, 2]
    assert sn.combine_vocab_shards(score_PB.flip(0), token_PB.flip(0)).tolist() == [3, 50, 7, 2]


def test_temperature_zero_is_argmax_with_lowest_index_ties():
    logits_BV, _, seeds_B, steps_B = _batch(4, 300, seed=3)
    logits_BV[1, 17] = logits_BV[1, 200] = logits_BV[1].max() + 1
    token_B = sn.gumbel_argmax(logits_BV, torch.zeros(4), seeds_B, steps_B)
    assert torch.equal(token_B, logits_BV.argmax(1))
    assert token_B[1].item() == 17


def test_sampling_is_not_argmax_at_positive_temperature():
    logits_BV = torch.zeros(256, 50)
    tokens = sn.gumbel_argmax(logits_BV, torch.ones(256), torch.arange(256), torch.zeros(256, dtype=torch.int64))
    assert tokens.unique().numel() > 40


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_logits_are_sampled_as_their_fp32_values(dtype):
    logits_BV, temperature_B, seeds_B, steps_B = _batch(8, 777, seed=4, dtype=dtype)
    half = sn.gumbel_argmax_partial(logits_BV, temperature_B, seeds_B, steps_B)
    full = sn.gumbel_argmax_partial(logits_BV.float(), temperature_B, seeds_B, steps_B)
    assert torch.equal(half[0], full[0]) and torch.equal(half[1], full[1])


def test_nan_logit_wins_like_torch_argmax():
    logits_BV = torch.randn(2, 10)
    logits_BV[0, 6] = float("nan")
    token_B = sn.gumbel_argmax(logits_BV, torch.tensor([1.0, 0.0]), _i64([1, 2]), _i64([0, 0]))
    assert token_B[0].item() == 6


@pytest.mark.parametrize("bad,match", [
    (dict(logits_BV=torch.zeros(4)), "logits_BV"),
    (dict(logits_BV=torch.zeros(2, 4, dtype=torch.int64)), "logits_BV"),
    (dict(logits_BV=torch.zeros(2, 0)), "vocab range"),
    (dict(temperature_B=torch.ones(3)), "temperature_B"),
    (dict(temperature_B=torch.tensor([1.0, -0.5])), "temperature_B must be >= 0"),
    (dict(seeds_B=torch.zeros(2)), "seeds_B must be an integer"),
    (dict(steps_B=_i64([1, 2, 3])), "steps_B"),
    (dict(vocab_start=-1), "vocab range"),
])
def test_bad_inputs_raise_value_errors(bad, match):
    args = dict(logits_BV=torch.zeros(2, 4), temperature_B=torch.ones(2), seeds_B=_i64([1, 2]),
                steps_B=_i64([0, 0]), vocab_start=0)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        sn.gumbel_argmax_partial(**args)


def test_cuda_impl_on_cpu_tensors_is_refused():
    with pytest.raises(RuntimeError, match="impl=cuda"):
        sn.gumbel_argmax(torch.zeros(1, 4), torch.ones(1), _i64([1]), _i64([0]), sn.SamplingImpl.CUDA)


# ---------------------------------------------------- csrc/philox_gumbel.cuh compiled for the host (no GPU needed)

HOST_SHIM = r"""
#include "philox_gumbel.cuh"
using namespace r1_megatron;
extern "C" {
void words(const uint32_t* ctr, const uint32_t* key, int rounds, uint32_t* out) {
  const Philox4x32 r = philox4x32(Philox4x32{{ctr[0], ctr[1], ctr[2], ctr[3]}}, key[0], key[1], rounds);
  for (int i = 0; i < 4; ++i) out[i] = r.x[i];
}
void noise(int64_t seed, int64_t step, int64_t v_start, int64_t v_end, float* u, float* g) {
  const NoiseStream ns = noise_stream(seed, step);
  for (int64_t v = v_start; v < v_end; ++v) {
    u[v - v_start] = uniform_from_bits(noise_group_bits(ns, v >> 2).x[v & 3]);
    g[v - v_start] = gumbel_from_uniform(u[v - v_start]);
  }
}
// The kernel's row loop run by `workers` simulated threads; `beats` is a total order on (score, id), so folding
// the partials in any order (the kernel's shuffle tree included) gives the same winner.
void rows(const float* logits, int64_t B, int64_t V, int64_t vocab_start, const float* t, const int64_t* seeds,
          const int64_t* steps, int64_t workers, float* score, int64_t* token) {
  for (int64_t b = 0; b < B; ++b) {
    ArgMax best = argmax_identity();
    const NoiseStream ns = noise_stream(seeds[b], steps[b]);
    for (int64_t w = workers - 1; w >= 0; --w)
      best = better_of(best, row_partial_argmax(logits + b * V, V, vocab_start, t[b], ns, w, workers));
    score[b] = best.score;
    token[b] = best.token;
  }
}
}
"""


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no host C++ compiler to build csrc/philox_gumbel.cuh for the CPU")
    out = tmp_path_factory.mktemp("philox_host")
    (out / "shim.cpp").write_text(HOST_SHIM)
    lib = out / "libphilox_host.so"
    subprocess.run([compiler, "-O2", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC", f"-I{REPO / 'csrc'}",
                    str(out / "shim.cpp"), "-o", str(lib)], check=True)
    return ctypes.CDLL(str(lib))


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.c_void_p)


@pytest.mark.parametrize("rounds,counter,key,expected", PHILOX_KAT)
def test_host_compiled_philox_known_answers(host_lib, rounds, counter, key, expected):
    ctr, k, out = np.array(counter, np.uint32), np.array(key, np.uint32), np.zeros(4, np.uint32)
    host_lib.words(_ptr(ctr), _ptr(k), ctypes.c_int(rounds), _ptr(out))
    assert out.tolist() == expected


@pytest.mark.parametrize("seed,step,start,end", [(0, 0, 0, 257), (-77, 2**35 + 3, 1001, 1500), (2**62, 9, 3, 6)])
def test_host_compiled_noise_matches_torch_bit_for_bit(host_lib, seed, step, start, end):
    u, g = np.zeros(end - start, np.float32), np.zeros(end - start, np.float32)
    host_lib.noise(ctypes.c_int64(seed), ctypes.c_int64(step), ctypes.c_int64(start), ctypes.c_int64(end),
                   _ptr(u), _ptr(g))
    assert torch.equal(torch.from_numpy(u), sn.philox_uniform(_i64([seed]), _i64([step]), start, end)[0])
    assert torch.equal(torch.from_numpy(g), sn.gumbel_noise(_i64([seed]), _i64([step]), start, end)[0])


@pytest.mark.parametrize("V,vocab_start,workers", [(1001, 0, 1), (1001, 0, 7), (998, 503, 32), (3, 6, 4)])
def test_host_compiled_row_loop_matches_torch(host_lib, V, vocab_start, workers):
    logits_BV, temperature_B, seeds_B, steps_B = _batch(8, V, seed=5)
    logits_BV[4, V // 2] = logits_BV[4, 0] = 50.0  # a greedy row with a tie: the lowest id must win
    temperature_B[4] = 0.0
    score, token = np.zeros(8, np.float32), np.zeros(8, np.int64)
    host_lib.rows(_ptr(logits_BV.numpy()), ctypes.c_int64(8), ctypes.c_int64(V), ctypes.c_int64(vocab_start),
                  _ptr(temperature_B.numpy()), _ptr(seeds_B.numpy()), _ptr(steps_B.numpy()),
                  ctypes.c_int64(workers), _ptr(score), _ptr(token))
    ref_score, ref_token = sn.gumbel_argmax_partial_torch(logits_BV, temperature_B, seeds_B, steps_B, vocab_start)
    assert token.tolist() == ref_token.tolist()
    assert torch.equal(torch.from_numpy(score), ref_score)


# ------------------------------------------------------------------------------------ the CUDA kernel (GPU only)

requires_cuda_kernel = pytest.mark.skipif(
    not (torch.cuda.is_available() and sn.cuda_kernel_available()),
    reason="needs a GPU and the built r1_megatron._C extension (CI is CPU-only; the host-compiled tests above "
           "cover the kernel's arithmetic and row loop)")


@pytest.mark.gpu
@requires_cuda_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,V,vocab_start", [(3, 17, 0), (8, 1001, 503), (16, 151936, 0)])
def test_cuda_kernel_matches_torch_token_for_token(dtype, B, V, vocab_start):
    logits_BV, temperature_B, seeds_B, steps_B = _batch(B, V, seed=6, dtype=dtype)
    strided = torch.cat([logits_BV, logits_BV[:, :5]], dim=1).cuda()[:, :V]  # row stride != V
    args = (temperature_B.cuda(), seeds_B.cuda(), steps_B.cuda(), vocab_start)
    score, token = sn.gumbel_argmax_partial(strided, *args, impl=sn.SamplingImpl.CUDA)
    ref_score, ref_token = sn.gumbel_argmax_partial_torch(logits_BV, temperature_B, seeds_B, steps_B, vocab_start)
    assert token.cpu().tolist() == ref_token.tolist()
    torch.testing.assert_close(score.cpu(), ref_score, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@requires_cuda_kernel
def test_cuda_kernel_is_the_auto_choice_and_nan_wins():
    logits_BV, temperature_B, seeds_B, steps_B = _batch(4, 151936, seed=7, dtype=torch.bfloat16)
    logits_BV[2, 123456] = float("nan")
    token = sn.gumbel_argmax(logits_BV.cuda(), temperature_B.cuda(), seeds_B.cuda(), steps_B.cuda())
    assert token.cpu().tolist() == sn.gumbel_argmax(logits_BV, temperature_B, seeds_B, steps_B).tolist()
    assert token[2].item() == 123456


# ------------------------------------------------------------------------------------------------ benchmark

def test_benchmark_main_runs_on_tiny_cpu_shapes(tmp_path):
    bench = load_bench("bench_sampling")
    out = tmp_path / "bench.json"
    report = bench.main(["--device", "cpu", "--batch-sizes", "2", "3", "--vocab", "65", "--iters", "2",
                         "--warmup", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    plain = ("torch_multinomial", "torch_gumbel")  # sample_triton runs through the interpreter (TRITON_INTERPRET=1)
    assert {(r["method"], r["setting"], r["batch"]) for r in report["results"]} == {
        *((m, "plain", b) for m in plain for b in (2, 3)),
        *((m, s, b) for m in ("sample_torch", "sample_triton") for s in ("plain", "r1_eval", "top_k") for b in (2, 3))}
    assert all(r["ms_per_call"] > 0 and r["vocab"] == 65 for r in report["results"])
