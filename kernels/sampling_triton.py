"""Triton: seeded Gumbel-max sampling and the sampled token's logprob in one pass over the vocabulary.

`_sampling_partials_kernel`, grid (B, S): program (b, s) streams split s of row b's vocab range in chunks of
BLOCK_Q Philox groups (the noise contract gives ids 4q .. 4q+3 the four words of one Philox call, so a chunk is
a [BLOCK_Q, 4] tile and each call is made once) and keeps, per row, the winner in torch.argmax's order (NaN
first, then the larger score, then the lower id) and an online logsumexp of s = logits / T'. It writes the 5
partials of reference.sampling_partials. `_combine_kernel` folds any number N of partials per row (the splits,
and under tensor parallelism every rank's) into the token and log p = s_token − (M + log Σ_n sumexp_n e^{m_n − M}).

Splits keep the GPU busy at decode batch sizes (B rows alone would leave most SMs idle). Tokens equal the torch
path's because every score is computed the same way: IEEE division (tl.div_rn, not Triton's approximate `/`),
IEEE addition, fp64 logs for the noise, and the same tie rule, whatever the chunk and split boundaries.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .backend import LAUNCH_ENV, interpreting
from .reference import LOGSUMEXP_FLOOR, NO_TOKEN, SAMPLING_PARTIALS
from .softmax_stats_triton import VocabLaunch

_NO_TOKEN: tl.constexpr = tl.constexpr(NO_TOKEN)
_FLOOR: tl.constexpr = tl.constexpr(LOGSUMEXP_FLOOR)
_PHILOX_ROUNDS: tl.constexpr = tl.constexpr(10)
_TWO_POW_M24: tl.constexpr = tl.constexpr(2.0 ** -24)


@triton.jit
def _beats(score_a, token_a, score_b, token_b):
    """a beats b in torch.argmax's order: NaN first, then the larger score, then the lower id."""
    nan_a = score_a != score_a
    nan_b = score_b != score_b
    tie = (score_a == score_b) | (nan_a & nan_b)
    return (nan_a & ~nan_b) | (score_a > score_b) | (tie & (token_a < token_b))


@triton.jit
def _best_of(score, token, valid):
    """(score, token) of the winner among the `valid` entries of a tile, or (−inf, NO_TOKEN) when none is."""
    is_nan = (score != score) & valid
    nan_token = tl.min(tl.where(is_nan, token, _NO_TOKEN))
    clean = tl.where(is_nan | ~valid, float("-inf"), score)
    top = tl.max(clean)
    top_token = tl.min(tl.where(valid & (clean == top), token, _NO_TOKEN))
    found_nan = nan_token != _NO_TOKEN
    return tl.where(found_nan, float("nan"), top), tl.where(found_nan, nan_token, top_token)


@triton.jit
def _gumbel_tile(q, lane, k0, k1, step_lo, step_hi):
    """g = fp32(−log(−log(fp64 u))) of ids 4q + lane: q [BLOCK_Q, 1] group ids, lane [1, 4] → [BLOCK_Q, 4]."""
    c0 = q.to(tl.uint32)
    zero = tl.zeros_like(c0)
    w0, w1, w2, w3 = tl.philox_impl(c0, zero + step_lo, zero + step_hi, zero, k0, k1, _PHILOX_ROUNDS)
    word = tl.where(lane == 0, w0, tl.where(lane == 1, w1, tl.where(lane == 2, w2, w3)))
    u = ((word >> 8) | 1).to(tl.float64) * _TWO_POW_M24  # ((x >> 9)·2 + 1)·2^-24, exact in fp32 and fp64
    return (-tl.log(-tl.log(u))).to(tl.float32)


@triton.jit
def _split_word(ptr):
    """(low, high) uint32 words of the int64 at ptr, read as its two's-complement uint64."""
    x = tl.load(ptr).to(tl.uint64, bitcast=True)
    return (x & 0xFFFFFFFF).to(tl.uint32), (x >> 32).to(tl.uint32)


@triton.jit
def _sampling_partials_kernel(logits_ptr, stride_b, temperature_ptr, seeds_ptr, steps_ptr, tau_ptr, partials_ptr,
                              vocab_start, vocab_end, split_groups, n_splits, HAS_TAU: tl.constexpr,
                              BLOCK_Q: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    row_ptr = logits_ptr + row * stride_b
    temperature = tl.load(temperature_ptr + row)
    greedy = temperature == 0.0
    t_score = tl.where(greedy, 1.0, temperature)
    if HAS_TAU:
        tau = tl.load(tau_ptr + row)
    k0, k1 = _split_word(seeds_ptr + row)
    step_lo, step_hi = _split_word(steps_ptr + row)
    q_begin = vocab_start // 4 + split * split_groups
    q_end = tl.minimum(q_begin + split_groups, (vocab_end + 3) // 4)
    lane = tl.arange(0, 4)[None, :]
    best_score = float("-inf")
    best_token = _NO_TOKEN
    m = _FLOOR
    sumexp = 0.0
    for q0 in tl.range(q_begin, q_end, BLOCK_Q):
        q = q0 + tl.arange(0, BLOCK_Q)[:, None]
        ids = q * 4 + lane  # global token ids of the [BLOCK_Q, 4] tile
        valid = (ids >= vocab_start) & (ids < vocab_end) & (q < q_end)
        x = tl.load(row_ptr + (ids - vocab_start), mask=valid, other=0.0).to(tl.float32)
        s = tl.div_rn(x, t_score)
        if greedy:  # no noise: a greedy row never runs Philox
            score = s
        else:
            score = s + _gumbel_tile(q, lane, k0, k1, step_lo, step_hi)
        if HAS_TAU:
            score = tl.where(x < tau, float("-inf"), score)  # `<` keeps NaN logits, as the torch path
        chunk_score, chunk_token = _best_of(score, ids, valid)
        take = _beats(chunk_score, chunk_token, best_score, best_token)
        best_score = tl.where(take, chunk_score, best_score)
        best_token = tl.where(take, chunk_token, best_token)
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s))
        sumexp = sumexp * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new))
        m = m_new
    has_token = best_token != _NO_TOKEN
    x_token = tl.load(row_ptr + tl.where(has_token, best_token - vocab_start, 0), mask=has_token,
                      other=0.0).to(tl.float32)
    out = partials_ptr + (row * n_splits + split) * 5
    tl.store(out, best_score.to(tl.float64))
    tl.store(out + 1, best_token.to(tl.float64))
    tl.store(out + 2, m.to(tl.float64))
    tl.store(out + 3, sumexp.to(tl.float64))
    tl.store(out + 4, tl.div_rn(x_token, t_score).to(tl.float64))


@triton.jit
def _combine_kernel(partials_ptr, n_parts, tokens_ptr, logprobs_ptr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    n = tl.arange(0, BLOCK_N)
    valid = n < n_parts
    part = partials_ptr + (row * n_parts + n) * 5
    token = tl.load(part + 1, mask=valid, other=_NO_TOKEN)
    best_score, best_token = _best_of(tl.load(part, mask=valid, other=float("-inf")), token, valid)
    m = tl.load(part + 2, mask=valid, other=_FLOOR)
    m_max = tl.max(m)
    log_z = m_max + tl.log(tl.sum(tl.load(part + 3, mask=valid, other=0.0) * tl.exp(m - m_max)))
    s_token = tl.sum(tl.where(valid & (token == best_token), tl.load(part + 4, mask=valid, other=0.0), 0.0))
    tl.store(tokens_ptr + row, best_token.to(tl.int64))
    tl.store(logprobs_ptr + row, (s_token - log_z).to(tl.float32))


def _launch(v_local: int) -> tuple[int, int]:
    """(BLOCK_Q Philox groups per chunk, num_warps). The kernel is bound by Philox and the fp64 logs, not by
    memory: one group (4 ids) per thread per chunk keeps it at ~60 registers on sm_90 (4 programs of 8 warps per
    SM); wider chunks cost registers without saving loads. Under the interpreter (and with
    R1_MEGATRON_VOCAB_LAUNCH=BLOCKxWARPS, BLOCK in ids) the chunks are VocabLaunch's."""
    if interpreting() or os.environ.get(LAUNCH_ENV):
        launch = VocabLaunch.for_vocab(v_local)
        return max(launch.block_v // 4, 4), launch.num_warps
    block_q = min(256, max(triton.next_power_of_2(triton.cdiv(v_local, 4)), 32))
    return block_q, block_q // 32


def _n_splits(groups: int, block_q: int, rows: int, device: torch.device) -> int:
    """Vocab splits per row: enough programs for ~2 per SM on a GPU (decode batches alone would leave most SMs
    idle); at most 2 under the interpreter, so that the tests cover the combination of splits."""
    chunks = triton.cdiv(groups, block_q)
    if device.type != "cuda":
        return min(chunks, 2)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(chunks, triton.cdiv(2 * sms, max(rows, 1))))


def sampling_partials(logits_BV: torch.Tensor, temperature_B: torch.Tensor, seeds_B: torch.Tensor,
                      steps_B: torch.Tensor, tau_B: torch.Tensor | None, vocab_start: int,
                      vocab_end: int) -> torch.Tensor:
    """Launch the streaming pass: partials fp64 [B, S, 5]. S depends only on (V_local, B, device), so every
    tensor-parallel rank gets the same shape whatever its vocab_start (the all-gather needs it)."""
    B, V_local = logits_BV.shape
    if logits_BV.stride(1) != 1:
        logits_BV = logits_BV.contiguous()
    block_q, num_warps = _launch(V_local)
    groups = triton.cdiv(V_local, 4) + 1  # an unaligned vocab_start makes the range straddle one more group
    splits = _n_splits(groups, block_q, B, logits_BV.device)
    split_groups = triton.cdiv(triton.cdiv(groups, splits), block_q) * block_q
    partials_BS5 = torch.empty((B, splits, SAMPLING_PARTIALS), dtype=torch.float64, device=logits_BV.device)
    if B:
        tau = temperature_B if tau_B is None else tau_B.to(torch.float32).contiguous()  # unread w/o HAS_TAU
        _sampling_partials_kernel[(B, splits)](
            logits_BV, logits_BV.stride(0), temperature_B, seeds_B, steps_B, tau, partials_BS5, vocab_start,
            vocab_end, split_groups, splits, HAS_TAU=tau_B is not None, BLOCK_Q=block_q, num_warps=num_warps)
    return partials_BS5


def combine_sampling_partials(partials_BN5: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the partials [B, N, 5] of each row: (tokens_B int64, logprobs_B fp32)."""
    B, N = partials_BN5.shape[:2]
    partials_BN5 = partials_BN5.contiguous()
    tokens_B = torch.empty(B, dtype=torch.int64, device=partials_BN5.device)
    logprobs_B = torch.empty(B, dtype=torch.float32, device=partials_BN5.device)
    if B:
        _combine_kernel[(B,)](partials_BN5, N, tokens_B, logprobs_B, BLOCK_N=triton.next_power_of_2(N))
    return tokens_B, logprobs_B


def sample_tokens(logits_BV, temperature_B, seeds_B, steps_B, tau_B):
    """Triton path of `r1_megatron.kernels.sample_tokens`: the row's splits combined (arguments validated)."""
    V = logits_BV.shape[1]
    return combine_sampling_partials(sampling_partials(logits_BV, temperature_B, seeds_B, steps_B, tau_B, 0, V))
