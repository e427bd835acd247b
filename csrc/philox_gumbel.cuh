// Seeded Gumbel-max sampling: the arithmetic shared by the CUDA kernel and by host code.
//
// Every function here is __host__ __device__ so that the same source is compiled into the kernel and, by a
// plain C++ compiler, into the CPU test (tests/test_sampling_noise.py builds it with c++ and checks it bit for bit
// against the pure-torch implementation in r1_megatron/sampling_noise.py). Nothing here includes torch.
//
// The noise contract (r1_megatron/sampling_noise.py documents the same, and both sides must change together):
//   key     = (seed & 0xffffffff, seed >> 32)                  seed: int64 read as its two's-complement uint64
//   counter = (v >> 2, step & 0xffffffff, step >> 32, 0)        v: global token id, step: int64 decode step
//   x       = Philox4x32-10(counter, key)[v & 3]                one Philox call serves 4 consecutive token ids
//   u       = ((x >> 9) * 2 + 1) * 2^-24                        in [2^-24, 1 - 2^-24], exact in fp32
//   g       = float(-log(-log(double(u))))                      fp64 so that CPU and GPU logs agree after rounding
//   score   = float(logit) / T + g   (IEEE fp32 division and addition; T == 0 means score = float(logit))
//   token   = argmax score; NaN beats every number, equal scores go to the lowest token id.
// The noise of token v depends only on (seed, step, v): not on the batch row, the batch size or the vocab slice.
#pragma once

#include <math.h>
#include <stdint.h>

#include <cmath>

#if defined(__CUDACC__)
#define R1_HD __host__ __device__ __forceinline__
#else
#define R1_HD inline
#endif

namespace r1_megatron {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // sqrt(3) - 1
constexpr int kPhiloxRounds = 10;

struct Philox4x32 {
  uint32_t x[4];
};

// High word of the 64-bit product a*b; the device intrinsic avoids nvcc's generic 64-bit multiply.
R1_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// One Philox round (Random123 philox4x32round): two 32x32->64 multiplies, then the xor shuffle.
R1_HD Philox4x32 philox_round(Philox4x32 c, uint32_t k0, uint32_t k1) {
  Philox4x32 out;
  out.x[0] = mulhi32(kPhiloxM1, c.x[2]) ^ c.x[1] ^ k0;
  out.x[1] = kPhiloxM1 * c.x[2];  // the low word: uint32 arithmetic wraps mod 2^32
  out.x[2] = mulhi32(kPhiloxM0, c.x[0]) ^ c.x[3] ^ k1;
  out.x[3] = kPhiloxM0 * c.x[0];
  return out;
}

// Philox4x32-R: R rounds with the key bumped by the Weyl constants between rounds (Salmon et al., SC'11).
R1_HD Philox4x32 philox4x32(Philox4x32 ctr, uint32_t k0, uint32_t k1, int rounds = kPhiloxRounds) {
  ctr = philox_round(ctr, k0, k1);
  for (int r = 1; r < rounds; ++r) {
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
    ctr = philox_round(ctr, k0, k1);
  }
  return ctr;
}

// 23 random bits as an odd multiple of 2^-24: exactly representable in fp32, so no rounding mode, FMA
// contraction or fast-math flag can turn it into 0 or 1 (the 24-bit variant (x>>8)*2^-24 + 2^-25 needs 25
// significant bits and rounds 1 - 2^-25 up to 1.0f).
R1_HD float uniform_from_bits(uint32_t x) {
  return static_cast<float>(((x >> 9) << 1) | 1u) * 5.9604644775390625e-08f;  // 2^-24
}

// fp64 on both sides: fp32 logf differs by an ulp between libm and CUDA (and more under --use_fast_math);
// correctly rounded fp64 results round to the same fp32 except within one fp64 ulp of an fp32 midpoint.
R1_HD float gumbel_from_uniform(float u) {
  return static_cast<float>(-::log(-::log(static_cast<double>(u))));
}

// The per-(seed, step) part of the noise contract, hoisted out of the vocab loop.
struct NoiseStream {
  uint32_t k0, k1, step_lo, step_hi;
};

R1_HD NoiseStream noise_stream(int64_t seed, int64_t step) {
  const uint64_t s = static_cast<uint64_t>(seed);
  const uint64_t t = static_cast<uint64_t>(step);
  return NoiseStream{static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32), static_cast<uint32_t>(t),
                     static_cast<uint32_t>(t >> 32)};
}

// Philox words for token ids 4q .. 4q+3.
R1_HD Philox4x32 noise_group_bits(const NoiseStream& ns, int64_t q) {
  const Philox4x32 ctr{{static_cast<uint32_t>(q), ns.step_lo, ns.step_hi, 0u}};
  return philox4x32(ctr, ns.k0, ns.k1);
}

// IEEE round-to-nearest on the device even under --use_fast_math (which would otherwise approximate the
// division), so the score matches the CPU's bit for bit. Fast math still flushes fp32 denormals to zero on the
// device, which can change a result only when a row's best scores are below 1.2e-38 in magnitude.
R1_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

R1_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

struct ArgMax {
  float score;
  int64_t token;
};

// Loses to every real candidate, including a -inf score (same score, larger id).
R1_HD ArgMax argmax_identity() { return ArgMax{-INFINITY, INT64_MAX}; }

// torch.argmax's order: NaN beats any number, then the larger score, then the lower token id.
R1_HD bool beats(const ArgMax& a, const ArgMax& b) {
  const bool a_nan = std::isnan(a.score);
  const bool b_nan = std::isnan(b.score);
  if (a_nan != b_nan) return a_nan;
  if (!a_nan && a.score != b.score) return a.score > b.score;
  return a.token < b.token;
}

R1_HD ArgMax better_of(const ArgMax& a, const ArgMax& b) { return beats(b, a) ? b : a; }

// One worker's share of a row whose slice `row` holds token ids [vocab_start, vocab_start + v_local)
// (row[v - vocab_start] is token v). Worker `worker` of `workers` takes every workers-th Philox group
// (4 ids) of the slice, or every workers-th id when greedy. The kernel runs it with (threadIdx.x, blockDim.x);
// the CPU test with a few simulated workers, so the slicing logic is tested without a GPU.
template <typename scalar_t>
R1_HD ArgMax row_partial_argmax(const scalar_t* row, int64_t v_local, int64_t vocab_start, float temperature,
                                const NoiseStream& ns, int64_t worker, int64_t workers) {
  ArgMax best = argmax_identity();
  const int64_t v_end = vocab_start + v_local;
  if (temperature == 0.0f) {  // greedy: no noise, plain argmax over the logits
    for (int64_t j = worker; j < v_local; j += workers) {
      best = better_of(best, ArgMax{static_cast<float>(row[j]), vocab_start + j});
    }
    return best;
  }
  const int64_t q_last = (v_end - 1) >> 2;
  for (int64_t q = (vocab_start >> 2) + worker; q <= q_last; q += workers) {
    const Philox4x32 bits = noise_group_bits(ns, q);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int w = 0; w < 4; ++w) {
      const int64_t v = 4 * q + w;
      if (v < vocab_start || v >= v_end) continue;  // only the slice's first and last groups are partial
      const float g = gumbel_from_uniform(uniform_from_bits(bits.x[w]));
      const float score = add_rn(div_rn(static_cast<float>(row[v - vocab_start]), temperature), g);
      best = better_of(best, ArgMax{score, v});
    }
  }
  return best;
}

}  // namespace r1_megatron
