// CUDA kernel for seeded Gumbel-max sampling over a (slice of the) vocabulary: one block per row, every thread
// folds its share of the row with row_partial_argmax, then a block-wide argmax reduction. The noise contract and
// the per-element arithmetic live in philox_gumbel.cuh; r1_megatron/sampling_noise.py is the torch twin.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <tuple>

#include "philox_gumbel.cuh"

namespace r1_megatron {
namespace {

// 1024 threads: decode batches are often smaller than the SM count, so a row must keep a whole SM busy;
// the loop is Philox (integer multiply) bound, not memory bound.
constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ ArgMax warp_argmax(ArgMax a) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const ArgMax other{__shfl_down_sync(0xffffffffu, a.score, offset),
                       __shfl_down_sync(0xffffffffu, a.token, offset)};
    a = better_of(a, other);
  }
  return a;
}

// The result is valid in thread 0 only.
__device__ __forceinline__ ArgMax block_argmax(ArgMax a) {
  __shared__ float warp_score[kWarps];
  __shared__ int64_t warp_token[kWarps];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  a = warp_argmax(a);
  if (lane == 0) {
    warp_score[warp] = a.score;
    warp_token[warp] = a.token;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < kWarps ? ArgMax{warp_score[lane], warp_token[lane]} : argmax_identity();
    a = warp_argmax(a);
  }
  return a;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    gumbel_argmax_kernel(const scalar_t* __restrict__ logits, int64_t row_stride, int64_t v_local,
                         int64_t vocab_start, const float* __restrict__ temperature,
                         const int64_t* __restrict__ seeds, const int64_t* __restrict__ steps,
                         float* __restrict__ best_score, int64_t* __restrict__ best_token) {
  const int64_t b = blockIdx.x;
  const NoiseStream ns = noise_stream(seeds[b], steps[b]);
  ArgMax best = row_partial_argmax(logits + b * row_stride, v_local, vocab_start, temperature[b], ns,
                                   static_cast<int64_t>(threadIdx.x), static_cast<int64_t>(kThreads));
  best = block_argmax(best);
  if (threadIdx.x == 0) {
    best_score[b] = best.score;
    best_token[b] = best.token;
  }
}

void check_row_vector(const at::Tensor& t, const char* name, at::ScalarType dtype, const at::Tensor& logits) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == logits.size(0), "gumbel_argmax: ", name, " must have shape [",
              logits.size(0), "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, "gumbel_argmax: ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == logits.device(), "gumbel_argmax: ", name, " is on ", t.device(), " but logits on ",
              logits.device());
}

}  // namespace

// Returns (score [B] fp32, token [B] int64): the best (logit/T + g) of each row within its vocab slice and its
// global token id. With vocab_start = 0 and the full vocabulary, token is the sample.
std::tuple<at::Tensor, at::Tensor> gumbel_argmax_partial_cuda(const at::Tensor& logits,
                                                               const at::Tensor& temperature,
                                                               const at::Tensor& seeds, const at::Tensor& steps,
                                                               int64_t vocab_start) {
  TORCH_CHECK(logits.is_cuda(), "gumbel_argmax: logits must be a CUDA tensor, got ", logits.device());
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) > 0, "gumbel_argmax: logits must be [B, V] with V > 0, got ",
              logits.sizes());
  TORCH_CHECK(vocab_start >= 0, "gumbel_argmax: vocab_start must be >= 0, got ", vocab_start);
  check_row_vector(temperature, "temperature", at::kFloat, logits);
  check_row_vector(seeds, "seeds", at::kLong, logits);
  check_row_vector(steps, "steps", at::kLong, logits);

  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor rows = logits.stride(1) == 1 ? logits : logits.contiguous();
  const at::Tensor temp = temperature.contiguous();
  const at::Tensor seed = seeds.contiguous();
  const at::Tensor step = steps.contiguous();
  at::Tensor best_score = at::empty({logits.size(0)}, logits.options().dtype(at::kFloat));
  at::Tensor best_token = at::empty({logits.size(0)}, logits.options().dtype(at::kLong));
  if (logits.size(0) == 0) return {best_score, best_token};

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.scalar_type(), "gumbel_argmax", [&] {
    gumbel_argmax_kernel<scalar_t><<<static_cast<unsigned int>(rows.size(0)), kThreads, 0, stream>>>(
        rows.data_ptr<scalar_t>(), rows.stride(0), rows.size(1), vocab_start, temp.data_ptr<float>(),
        seed.data_ptr<int64_t>(), step.data_ptr<int64_t>(), best_score.data_ptr<float>(),
        best_token.data_ptr<int64_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {best_score, best_token};
}

}  // namespace r1_megatron
