"""Seeded Gumbel-max sampling whose noise depends only on (request seed, decode step, token id).

A request's sampled tokens are therefore reproducible across runs, batch compositions and tensor-parallel
vocab layouts: nothing about the batch row, the batch size or which rank holds a vocab slice enters the noise.

Noise contract (csrc/philox_gumbel.cuh implements the same; change both together):

    key     = (seed & 0xffffffff, seed >> 32)              seed: int64, read as its two's-complement uint64
    counter = (v >> 2, step & 0xffffffff, step >> 32, 0)    v: global token id, step: int64 decode step
    x       = Philox4x32-10(counter, key)[v & 3]            one Philox call serves the 4 ids 4q .. 4q+3
    u       = ((x >> 9) * 2 + 1) * 2^-24                    odd multiples of 2^-24: u in [2^-24, 1 - 2^-24]
    g       = float32(-log(-log(float64(u))))               standard Gumbel noise
    score   = float32(logit) / T + g                        fp32, IEEE division and addition
    token   = argmax_v score                                NaN wins, ties go to the lowest token id

T == 0 means greedy: score = float32(logit), no noise. By the Gumbel-max trick the token is distributed as
softmax(logits / T). The uniform keeps 23 bits rather than 24 so that u is exactly representable in fp32 (the
24-bit (x>>8)·2^-24 + 2^-25 needs 25 significant bits and rounds 1 − 2^-25 up to 1.0, where g is +inf); the
fp64 logs make CPU and GPU agree after rounding to fp32 except within one fp64 ulp of an fp32 midpoint.

Tensor-parallel recipe (Megatron vocab-parallel logits, rank r holds ids [vocab_start, vocab_end)):
  1. each rank calls `gumbel_argmax_partial(logits_local_BV, T_B, seeds_B, steps_B, vocab_start)` and gets
     (score_B, token_B), its best score and the *global* id of that token; the noise of its slice is
     `gumbel_noise(seeds_B, steps_B, vocab_start, vocab_end)`, identical to the same columns of the full noise;
  2. all-gather the pairs (e.g. packed as float64 [B, 2]: fp32 scores and ids < 2^53 are exact) and reduce with
     `combine_vocab_shards`: max score, ties to the lowest global id — exactly the token the full vocab gives.
The engine's sampler does this with its logprob and top-k/top-p in rollout/vocab_parallel_sampling.py.

Implementations: pure torch here (the reference; on CPU one uint64 multiply per Philox word product), the CUDA
kernel in csrc/, and the fused Triton sampling kernel (kernels/sampling_triton.py), which generates the same
words in-kernel; all three draw the same tokens.
"""
from __future__ import annotations

import enum
import functools

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # golden ratio, sqrt(3) - 1
PHILOX_ROUNDS = 10
WORDS_PER_CALL = 4


class SamplingImpl(str, enum.Enum):
    """Which implementation draws the tokens (rollout/sampler.py's docstring has the table of what runs where).

    AUTO here: the CUDA kernel for CUDA tensors when r1_megatron._C is built, else torch; `sampler.sample` gives
    AUTO its own meaning (the fused Triton kernel first)."""

    AUTO = "auto"
    CUDA = "cuda"  # csrc/philox_sampling.cu (r1_megatron._C)
    TRITON = "triton"  # kernels/sampling_triton.py, through r1_megatron.kernels.sampling
    TORCH = "torch"


# ---------------------------------------------------------------------------------------------- Philox in torch

def _mulhilo32(m: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of m·x for a 32-bit constant m and int64 `x` holding 32-bit values; hi is exact in
    its low 32 bits only (the caller masks it after its xors, which saves a pass per word).

    On CPU one uint64 product, exact mod 2^64 (torch's CUDA build has no uint64 multiply, hence the split)."""
    if x.device.type != "cpu":
        return _mulhilo32_split(m, x)
    p = (x.view(torch.uint64) * m).view(torch.int64)
    lo = p & MASK32
    return p.bitwise_right_shift_(32), lo


def _mulhilo32_split(m: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """_mulhilo32 in int64 arithmetic only: m is split into 16-bit halves so that no product exceeds 2^48."""
    p_lo = x * (m & 0xFFFF)
    p_hi = x * (m >> 16)
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & MASK32
    return hi, lo


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[torch.Tensor, torch.Tensor],
               rounds: int = PHILOX_ROUNDS) -> tuple[torch.Tensor, ...]:
    """Philox4x32-R (Salmon et al., SC'11; Random123's philox4x32) on int64 tensors holding uint32 words.

    counter: 4 broadcastable tensors, key: 2; returns the 4 output words, broadcast to a common shape."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        if r > 0:
            k0, k1 = (k0 + PHILOX_W[0]) & MASK32, (k1 + PHILOX_W[1]) & MASK32
        hi0, lo0 = _mulhilo32(PHILOX_M[0], c0)
        hi1, lo1 = _mulhilo32(PHILOX_M[1], c2)
        # the first xor broadcasts (round 1 mixes [B, 1] and [1, Q] words), the rest work in place
        c0 = (hi1 ^ c1).bitwise_xor_(k0).bitwise_and_(MASK32)
        c2 = (hi0 ^ c3).bitwise_xor_(k1).bitwise_and_(MASK32)
        c1, c3 = lo1, lo0
    return torch.broadcast_tensors(c0, c1, c2, c3)


def _split_words(x_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) 32-bit words of int64 values (two's complement), as [B, 1] columns."""
    return (x_B & MASK32)[:, None], ((x_B >> 32) & MASK32)[:, None]


def philox_bits(seeds_B: torch.Tensor, steps_B: torch.Tensor, vocab_start: int, vocab_end: int) -> torch.Tensor:
    """The Philox word x of every token id in [vocab_start, vocab_end) per row: int64 [B, vocab_end - vocab_start]."""
    _check_seeds_steps(seeds_B, steps_B)
    _check_vocab_range(vocab_start, vocab_end)
    q_first, q_last = vocab_start // WORDS_PER_CALL, (vocab_end - 1) // WORDS_PER_CALL
    q_Q = torch.arange(q_first, q_last + 1, dtype=torch.int64, device=seeds_B.device)[None, :]
    step_lo, step_hi = _split_words(steps_B)
    words = philox4x32((q_Q, step_lo, step_hi, torch.zeros_like(step_lo)), _split_words(seeds_B))
    bits_BG = torch.stack(words, dim=-1).flatten(1)  # column j is token id 4·q_first + j
    offset = vocab_start - WORDS_PER_CALL * q_first
    return bits_BG[:, offset:offset + vocab_end - vocab_start]


def uniform_from_bits(x: torch.Tensor) -> torch.Tensor:
    """u = ((x >> 9)·2 + 1)·2^-24 in fp32: the top 23 bits as an odd multiple of 2^-24, exact, never 0 or 1."""
    return ((x >> 8) | 1).to(torch.float32) * 2.0 ** -24  # (x >> 9)·2 + 1 == (x >> 8) | 1


def gumbel_from_bits(x: torch.Tensor) -> torch.Tensor:
    """g = float32(-log(-log(float64(u)))) with u = uniform_from_bits(x): fp32, x's shape.

    u is formed directly in fp64 (its odd numerator is < 2^24, so the value is the fp32 one exactly), and the two
    logs run in place: five passes over the tensor instead of ten."""
    u = ((x >> 8) | 1).to(torch.float64).mul_(2.0 ** -24)
    return u.log_().neg_().log_().neg_().to(torch.float32)


def philox_uniform(seeds_B: torch.Tensor, steps_B: torch.Tensor, vocab_start: int, vocab_end: int) -> torch.Tensor:
    """Uniforms u in (0, 1), fp32 [B, vocab_end - vocab_start], of token ids [vocab_start, vocab_end)."""
    return uniform_from_bits(philox_bits(seeds_B, steps_B, vocab_start, vocab_end))


def gumbel_noise(seeds_B: torch.Tensor, steps_B: torch.Tensor, vocab_start: int, vocab_end: int) -> torch.Tensor:
    """Gumbel noise g = -log(-log u), fp32 [B, vocab_end - vocab_start], of token ids [vocab_start, vocab_end).

    A tensor-parallel rank passes its own slice; the result equals those columns of the full-vocab noise."""
    return gumbel_from_bits(philox_bits(seeds_B, steps_B, vocab_start, vocab_end))


def gumbel_noise_at(seeds_N: torch.Tensor, steps_N: torch.Tensor, ids_N: torch.Tensor) -> torch.Tensor:
    """Gumbel noise of single (seed, step, token id) triples, fp32 [N]: entry n equals
    gumbel_noise(seeds_N[n:n+1], steps_N[n:n+1], 0, ids_N[n] + 1)[0, -1]. One Philox call per entry (four
    per group of four ids in gumbel_noise), so it pays off when few ids of a row are needed (truncated rows)."""
    key = (seeds_N & MASK32, (seeds_N >> 32) & MASK32)
    counter = (ids_N >> 2, steps_N & MASK32, (steps_N >> 32) & MASK32, torch.zeros_like(ids_N))
    words_N4 = torch.stack(philox4x32(counter, key), dim=1)
    return gumbel_from_bits(words_N4.gather(1, (ids_N & 3)[:, None])[:, 0])


# ------------------------------------------------------------------------------------------ Gumbel-max sampling

def gumbel_argmax_partial_torch(logits_BV: torch.Tensor, temperature_B: torch.Tensor, seeds_B: torch.Tensor,
                                steps_B: torch.Tensor, vocab_start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(best score_B fp32, its global token id_B int64) over this vocab slice, in pure torch (the reference).

    score = float32(logit) / T + g(seed, step, id), or float32(logit) where T == 0; logits_BV holds ids
    [vocab_start, vocab_start + V)."""
    logits_f32_BV = logits_BV.to(torch.float32)
    noise_BV = gumbel_noise(seeds_B, steps_B, vocab_start, vocab_start + logits_BV.shape[1])
    greedy_B1 = (temperature_B == 0)[:, None]
    sampled_BV = logits_f32_BV / torch.where(greedy_B1, 1.0, temperature_B[:, None]) + noise_BV
    scores_BV = torch.where(greedy_B1, logits_f32_BV, sampled_BV)
    token_B = torch.argmax(scores_BV, dim=1)  # documented: NaN counts as the maximum, ties give the first index
    return scores_BV.gather(1, token_B[:, None])[:, 0], token_B + vocab_start


def _beats(score_a: torch.Tensor, token_a: torch.Tensor, score_b: torch.Tensor, token_b: torch.Tensor) -> torch.Tensor:
    """a beats b in torch.argmax's order: NaN first, then the larger score, then the lower id (as the kernel)."""
    nan_a, nan_b = score_a.isnan(), score_b.isnan()
    tie = (score_a == score_b) | (nan_a & nan_b)
    return (nan_a & ~nan_b) | (score_a > score_b) | (tie & (token_a < token_b))


def combine_vocab_shards(score_PB: torch.Tensor, token_PB: torch.Tensor) -> torch.Tensor:
    """Token_B from the per-shard (score, global id) pairs [P, B] of `gumbel_argmax_partial`: the best score,
    ties to the lowest global id, which is what the argmax over the whole vocabulary returns."""
    if score_PB.dim() != 2 or score_PB.shape != token_PB.shape or score_PB.shape[0] == 0:
        raise ValueError(f"combine_vocab_shards: score_PB and token_PB must both be [P>0, B], got "
                         f"{tuple(score_PB.shape)} and {tuple(token_PB.shape)}")
    best_score_B, best_token_B = score_PB[0], token_PB[0]
    for score_B, token_B in zip(score_PB[1:], token_PB[1:]):
        take_B = _beats(score_B, token_B, best_score_B, best_token_B)
        best_score_B = torch.where(take_B, score_B, best_score_B)
        best_token_B = torch.where(take_B, token_B, best_token_B)
    return best_token_B


def gumbel_argmax_partial(logits_BV: torch.Tensor, temperature_B: torch.Tensor, seeds_B: torch.Tensor,
                          steps_B: torch.Tensor, vocab_start: int = 0,
                          impl: SamplingImpl = SamplingImpl.AUTO) -> tuple[torch.Tensor, torch.Tensor]:
    """(score_B fp32, global token_B int64): the Gumbel-max winner within the vocab slice logits_BV, which holds
    ids [vocab_start, vocab_start + V). Combine ranks with `combine_vocab_shards` (see the module docstring).

    logits_BV: fp32/bf16/fp16 [B, V]; temperature_B: [B] (cast to fp32), 0 = greedy; seeds_B, steps_B: int [B]."""
    temperature_B, seeds_B, steps_B = validated_rows(logits_BV, temperature_B, seeds_B, steps_B, vocab_start)
    impl = _resolve_impl(impl, logits_BV)
    if impl is SamplingImpl.CUDA:
        return _cuda_op()(logits_BV, temperature_B, seeds_B, steps_B, vocab_start)
    if impl is SamplingImpl.TRITON:  # the fused kernel's partials hold the same (score, id) pair
        from r1_megatron.kernels import Backend, sampling_partials  # late: r1_megatron.kernels imports this module
        partials_BS5 = sampling_partials(logits_BV, temperature_B, seeds_B, steps_B, None, vocab_start,
                                         vocab_start + logits_BV.shape[1], backend=Backend.TRITON)
        score_SB, token_SB = partials_BS5[:, :, 0].T, partials_BS5[:, :, 1].T
        token_B = combine_vocab_shards(score_SB, token_SB)
        return score_SB.gather(0, (token_SB == token_B).int().argmax(0)[None])[0].float(), token_B.long()
    return gumbel_argmax_partial_torch(logits_BV, temperature_B, seeds_B, steps_B, vocab_start)


def gumbel_argmax(logits_BV: torch.Tensor, temperature_B: torch.Tensor, seeds_B: torch.Tensor,
                  steps_B: torch.Tensor, impl: SamplingImpl = SamplingImpl.AUTO) -> torch.Tensor:
    """Sampled token ids int64 [B]: argmax_v(logits/T + g(seed_b, step_b, v)), distributed as softmax(logits/T)
    and reproducible from (seed, step) alone; T == 0 gives argmax(logits)."""
    return gumbel_argmax_partial(logits_BV, temperature_B, seeds_B, steps_B, 0, impl)[1]


# --------------------------------------------------------------------------------------- dispatch and checks

@functools.lru_cache(maxsize=1)
def _cuda_op():
    """torch.ops.r1_megatron.gumbel_argmax_partial, or None when the extension was not built."""
    try:
        import r1_megatron._C  # noqa: F401  (importing registers the ops)
    except ImportError:
        return None
    return torch.ops.r1_megatron.gumbel_argmax_partial


def cuda_kernel_available() -> bool:
    return _cuda_op() is not None


def _resolve_impl(impl: SamplingImpl, logits_BV: torch.Tensor) -> SamplingImpl:
    impl = SamplingImpl(impl)
    if impl is SamplingImpl.AUTO:
        return SamplingImpl.CUDA if logits_BV.is_cuda and cuda_kernel_available() else SamplingImpl.TORCH
    if impl is SamplingImpl.CUDA and not (logits_BV.is_cuda and cuda_kernel_available()):
        raise RuntimeError(f"gumbel_argmax: impl=cuda needs CUDA logits (got {logits_BV.device}) and the built "
                           f"extension r1_megatron._C (importable: {cuda_kernel_available()})")
    return impl


def _check_seeds_steps(seeds_B: torch.Tensor, steps_B: torch.Tensor) -> None:
    for name, t in (("seeds_B", seeds_B), ("steps_B", steps_B)):
        if t.dtype != torch.int64 or t.dim() != 1:
            raise ValueError(f"{name} must be a 1-D int64 tensor, got {t.dtype} of shape {tuple(t.shape)}")
    if seeds_B.shape != steps_B.shape or seeds_B.device != steps_B.device:
        raise ValueError(f"seeds_B {tuple(seeds_B.shape)} on {seeds_B.device} and steps_B {tuple(steps_B.shape)} "
                         f"on {steps_B.device} must match")


def _check_vocab_range(vocab_start: int, vocab_end: int) -> None:
    if not 0 <= vocab_start < vocab_end:
        raise ValueError(f"vocab range must satisfy 0 <= vocab_start < vocab_end, got [{vocab_start}, {vocab_end})")


def validated_rows(logits_BV, temperature_B, seeds_B, steps_B, vocab_start=0):
    """Shapes, dtypes and devices; returns (temperature fp32, seeds int64, steps int64) ready for either path.

    Negative temperatures are rejected only for CPU tensors: checking CUDA values would sync every decode step."""
    if logits_BV.dim() != 2 or not logits_BV.is_floating_point():
        raise ValueError(f"logits_BV must be a 2-D float tensor, got {logits_BV.dtype} {tuple(logits_BV.shape)}")
    _check_vocab_range(vocab_start, vocab_start + logits_BV.shape[1])
    for name, t in (("temperature_B", temperature_B), ("seeds_B", seeds_B), ("steps_B", steps_B)):
        if t.shape != (logits_BV.shape[0],) or t.device != logits_BV.device:
            raise ValueError(f"{name} must be [{logits_BV.shape[0]}] on {logits_BV.device}, "
                             f"got {tuple(t.shape)} on {t.device}")
    for name, t in (("seeds_B", seeds_B), ("steps_B", steps_B)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")
    if not temperature_B.is_cuda and bool((temperature_B < 0).any()):
        raise ValueError(f"temperature_B must be >= 0, got {temperature_B.tolist()}")
    return temperature_B.to(torch.float32), seeds_B.to(torch.int64), steps_B.to(torch.int64)
