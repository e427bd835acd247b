"""Sample one token per batch row, each row with its own temperature, top-k, top-p, seed and step.

Continuous batching mixes requests in one batch, so every setting is a per-row tensor and the whole batch is
handled by the same vectorised ops (one sort per batch, no loop over rows).

The rule, per row b (T = temperature_B[b], logits in fp32):
  1. greedy (T == 0): token = argmax(logits), ties to the lowest id.
  2. top-k, then top-p, the order of vLLM and Hugging Face's warpers: keep the top_k largest logits, then, on
     softmax(kept logits / T), the smallest most-likely-first prefix whose mass reaches top_p (at least one
     token). The kept set is then widened to every token whose logit equals the last kept one, so it is
     always {v : logit_v >= threshold}: ties at a boundary are all kept (as HF's top-k warper does), and the
     set never depends on token ids or on how a sort orders equal values. top_k = 0 (or >= V) and top_p = 1
     switch the step off.
  3. Gumbel-max over the kept tokens (r1_megatron.sampling_noise): token = argmax_v(logit_v / T + g(seed, step, v))
     with -inf outside the kept set, an exact sample of the truncated, renormalised softmax(logits / T). The
     noise depends only on (seed, step, token id), so a row's token does not depend on its position in the
     batch, on the other rows or on the batch size, and is the same in every run.
  logprobs_B[b] = log_softmax(logits / T)[token], the temperature-scaled FULL distribution, before top-k/top-p
  truncation (greedy rows: T taken as 1, i.e. log_softmax(logits)[token]). This is what the trainer's own
  forward computes for the same token, so rollout and training log-probabilities agree by construction.

Steps 1 and 3 and the logprob are one pass over the vocabulary (r1_megatron.kernels.sample_tokens, given the
threshold τ of step 2); step 2 needs a sort (a top-k when top-p is off) and runs in torch, only for batches
with a truncating row. What runs where, for `sample` / `SamplingBatch.sample` with impl=AUTO:
  CUDA tensors                        the fused Triton kernel (kernels/sampling_triton.py)
  CPU tensors, TRITON_INTERPRET=1     the same kernel through Triton's interpreter (the kernel tests)
  CPU tensors                         the torch path (kernels/reference.py sample_tokens)
  R1_MEGATRON_KERNELS=torch|triton    forces one, as for every kernel (kernels/backend.py)
impl=TRITON / TORCH force one; impl=CUDA draws the token with the csrc/ CUDA kernel (r1_megatron._C, token
only) and takes the logprob in torch. `sampling_noise.gumbel_argmax` (the bare Gumbel-max, no logprob) keeps
its own AUTO: the csrc/ kernel on CUDA when built, else torch. Every implementation draws the same tokens.

Tensor parallelism: with gathered logits (the model's runtime_gather_output=True) every TP rank calls `sample`
on the same full-vocabulary logits with the same per-row settings; the noise is counter-based, so every rank
draws the same tokens with no broadcast (a stateful torch RNG would diverge as soon as ranks consumed it
differently). Drop Megatron's padded vocab columns (or set them to -inf) first. Without the gather,
rollout/vocab_parallel_sampling.py samples from the vocab shards directly, with the same results. A NaN logit
wins, as in sampling_noise (its row's logprob is NaN).

Seeds: a request with n completions gives completion j the seed `completion_seeds(seed, n)[j]`; a request
without a seed first draws one int64 from the engine's torch.Generator (`request_seeds`), so a whole run is
reproducible from that generator's seed and the order requests arrive in.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import torch

from r1_megatron import sampling_noise
from r1_megatron.kernels import Backend, sample_tokens, select_backend
from r1_megatron.kernels.reference import scoring_temperature
from r1_megatron.sampling_noise import SamplingImpl

from .sampling_params import INT64_MAX, INT64_MIN, SamplingParams

MASK64 = 2**64 - 1
SPLITMIX_GAMMA = 0x9E3779B97F4A7C15


class SampleOutput(NamedTuple):
    tokens_B: torch.Tensor  # int64 [B]
    logprobs_B: torch.Tensor  # fp32 [B], log_softmax(logits / T)[token] before truncation (T = 1 when greedy)


# --------------------------------------------------------------------------------------------- pure functions

def truncation_threshold_B(logits_BV: torch.Tensor, temperature_B: torch.Tensor,
                           top_k_B: torch.Tensor | None = None, top_p_B: torch.Tensor | None = None,
                           max_top_k: int | None = None) -> torch.Tensor:
    """τ_B such that row b keeps exactly the tokens with logit >= τ_B[b] (logits' dtype, [B]).

    With s = the row's logits sorted descending and p = softmax(s / T) restricted to s >= s[k-1]:
      n_k = top_k if 0 < top_k < V else V;  n_p = 1 + #{r < V-1 : cumsum(p)[r] < top_p}, or V when top_p >= 1;
      τ = s[min(n_k, n_p) - 1].
    n_p is the length of the smallest prefix whose mass reaches top_p (rank 0 is always kept). Without top_p_B
    only the k largest logits are needed (a top-k, not a sort) and rows without top-k get τ = -inf, which keeps
    the same set as s[V-1]; max_top_k, the batch's largest top_k when the host knows it, saves a device sync."""
    if top_p_B is None:
        return top_k_threshold_B(logits_BV, top_k_B, max_top_k)
    V = logits_BV.shape[1]
    sorted_BV = logits_BV.sort(dim=1, descending=True).values
    n_keep_B = torch.full((logits_BV.shape[0],), V, dtype=torch.int64, device=logits_BV.device)
    if top_k_B is not None:
        n_keep_B = torch.where((top_k_B > 0) & (top_k_B < V), top_k_B.to(torch.int64), n_keep_B)
    tau_k_B1 = sorted_BV.gather(1, n_keep_B[:, None] - 1)
    scaled_BV = sorted_BV.to(torch.float32) / scoring_temperature(temperature_B)[:, None]
    cum_BV = scaled_BV.masked_fill_(sorted_BV < tau_k_B1, float("-inf")).softmax(dim=1).cumsum_(dim=1)
    top_p_B1 = top_p_B.to(torch.float32)[:, None]
    n_p_B = 1 + (cum_BV[:, :-1] < top_p_B1).sum(dim=1)
    n_keep_B = torch.minimum(n_keep_B, torch.where(top_p_B1[:, 0] >= 1, V, n_p_B))
    return sorted_BV.gather(1, n_keep_B[:, None] - 1)[:, 0]


def top_k_threshold_B(logits_BV: torch.Tensor, top_k_B: torch.Tensor, max_top_k: int | None = None) -> torch.Tensor:
    """τ_B of top-k alone: the top_k-th largest logit of rows with 0 < top_k < V, -inf (keep all) elsewhere; the
    same value as the sorted row's s[k-1] (topk and sort order NaN first alike). Logits' dtype, [B]."""
    V = logits_BV.shape[1]
    on_B = (top_k_B > 0) & (top_k_B < V)
    k_max = min(int(top_k_B.max()) if max_top_k is None else max_top_k, V - 1)
    tau_B = torch.full(on_B.shape, float("-inf"), dtype=logits_BV.dtype, device=logits_BV.device)
    if k_max < 1:
        return tau_B
    top_BK = logits_BV.topk(k_max, dim=1).values
    kth_B = top_BK.gather(1, (top_k_B.clamp(1, k_max) - 1)[:, None].to(torch.int64))[:, 0]
    return torch.where(on_B, kth_B, tau_B)


def truncate_logits(logits_BV: torch.Tensor, temperature_B: torch.Tensor, top_k_B: torch.Tensor | None = None,
                    top_p_B: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of logits_BV with -inf outside each row's top-k/top-p set (see truncation_threshold_B)."""
    return _mask_below(logits_BV, truncation_threshold_B(logits_BV, temperature_B, top_k_B, top_p_B))


def _mask_below(logits_BV: torch.Tensor, tau_B: torch.Tensor) -> torch.Tensor:
    # `<` rather than `>=` keeps a whole row when τ is NaN (a NaN logit), so the NaN still wins
    return logits_BV.masked_fill(logits_BV < tau_B[:, None], float("-inf"))


def token_logprobs(logits_BV: torch.Tensor, temperature_B: torch.Tensor, tokens_B: torch.Tensor) -> torch.Tensor:
    """log_softmax(fp32(logits) / T)[token] per row, T = 1 for greedy rows: fp32 [B], before any truncation."""
    scaled_BV = logits_BV.to(torch.float32) / scoring_temperature(temperature_B)[:, None]
    return torch.log_softmax(scaled_BV, dim=1).gather(1, tokens_B[:, None])[:, 0]


def sample(logits_BV: torch.Tensor, temperature_B: torch.Tensor, seeds_B: torch.Tensor, steps_B: torch.Tensor,
           top_k_B: torch.Tensor | None = None, top_p_B: torch.Tensor | None = None,
           impl: SamplingImpl = SamplingImpl.AUTO) -> SampleOutput:
    """One token per row (the rule, the logprobs and which implementation runs are in the module docstring).

    logits_BV: fp32/bf16/fp16 [B, V], the full vocabulary; temperature_B: [B], 0 = greedy; seeds_B: int64 [B]
    (completion_seeds); steps_B: int64 [B], the index of the token being generated within its completion;
    top_k_B: int [B], 0 = off; top_p_B: float [B] in (0, 1]. Pass None for top_k_B / top_p_B when no row of
    the batch uses it: that skips the sort."""
    return _sample(logits_BV, temperature_B, seeds_B, steps_B, top_k_B, top_p_B, impl, None)


def _sample(logits_BV, temperature_B, seeds_B, steps_B, top_k_B, top_p_B, impl, max_top_k) -> SampleOutput:
    _check_truncation_args(logits_BV, top_k_B, top_p_B)
    temperature_B, seeds_B, steps_B = sampling_noise.validated_rows(logits_BV, temperature_B, seeds_B, steps_B)
    tau_B = None
    if top_k_B is not None or top_p_B is not None:
        tau_B = truncation_threshold_B(logits_BV, temperature_B, top_k_B, top_p_B, max_top_k)
    impl = _resolved_impl(impl, logits_BV)
    if impl is SamplingImpl.CUDA:
        truncated_BV = logits_BV if tau_B is None else _mask_below(logits_BV, tau_B)
        tokens_B = sampling_noise.gumbel_argmax(truncated_BV, temperature_B, seeds_B, steps_B, impl)
        return SampleOutput(tokens_B, token_logprobs(logits_BV, temperature_B, tokens_B))
    backend = Backend.TRITON if impl is SamplingImpl.TRITON else Backend.TORCH
    return SampleOutput(*sample_tokens(logits_BV, temperature_B, seeds_B, steps_B, tau_B, backend=backend))


def _resolved_impl(impl: SamplingImpl, logits_BV: torch.Tensor) -> SamplingImpl:
    """AUTO: the fused kernel where the kernels' rule picks Triton, else the torch path (module docstring)."""
    impl = SamplingImpl(impl)
    if impl is not SamplingImpl.AUTO:
        return impl
    return SamplingImpl.TRITON if select_backend(logits_BV) is Backend.TRITON else SamplingImpl.TORCH


def _check_truncation_args(logits_BV, top_k_B, top_p_B) -> None:
    """Shapes, dtypes and devices; values only for CPU tensors (checking CUDA ones would sync every step)."""
    for name, t, want_float in (("top_k_B", top_k_B, False), ("top_p_B", top_p_B, True)):
        if t is None:
            continue
        if t.shape != (logits_BV.shape[0],) or t.device != logits_BV.device or t.is_floating_point() != want_float:
            raise ValueError(f"{name} must be {'a float' if want_float else 'an integer'} tensor of shape "
                             f"[{logits_BV.shape[0]}] on {logits_BV.device}, got {t.dtype} "
                             f"{tuple(t.shape)} on {t.device}")
    if top_k_B is not None and not top_k_B.is_cuda and bool((top_k_B < 0).any()):
        raise ValueError(f"top_k_B must be >= 0 (0 = off), got {top_k_B.tolist()}")
    if top_p_B is not None and not top_p_B.is_cuda and not bool(((top_p_B > 0) & (top_p_B <= 1)).all()):
        raise ValueError(f"top_p_B must be in (0, 1], got {top_p_B.tolist()}")


# ------------------------------------------------------------------------------------------------------ seeds

def _splitmix64(state: int) -> int:
    """The SplitMix64 output function (Steele, Lea & Flood, OOPSLA'14) of a 64-bit state."""
    z = state & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def _as_int64(x: int) -> int:
    return x - 2**64 if x > INT64_MAX else x


def completion_seeds(request_seed: int, n: int) -> list[int]:
    """Noise seeds (int64) of a request's completions 0..n-1: outputs 1..n of SplitMix64 seeded with the request
    seed. Completion j's seed does not depend on n, and requests with nearby seeds (0, 1, 2, ...) get unrelated
    streams, which `request_seed + j` would not give (completion 1 of seed 0 would repeat completion 0 of 1)."""
    if not INT64_MIN <= request_seed <= INT64_MAX:
        raise ValueError(f"completion_seeds: request_seed must be an int64, got {request_seed!r}")
    return [_as_int64(_splitmix64(request_seed + (j + 1) * SPLITMIX_GAMMA)) for j in range(n)]


def request_seeds(params: SamplingParams, generator: torch.Generator) -> list[int]:
    """The n completion seeds of a request: from params.seed, or, when it is None, from one int64 drawn from
    `generator` (CPU torch.Generator owned by the engine; one draw per unseeded request, in arrival order)."""
    seed = params.seed
    if seed is None:
        seed = int(torch.randint(INT64_MIN, INT64_MAX, (1,), generator=generator, dtype=torch.int64).item())
    return completion_seeds(seed, params.n)


# ----------------------------------------------------------------------------------------- batch of rows

@dataclasses.dataclass(frozen=True)
class SamplingBatch:
    """The per-row sampling tensors of one decode step, built from the rows' host-side settings.

    top_k_B / top_p_B are None when no row uses them, so batches without truncation skip the sort. params keeps
    the rows' settings on the host (from_rows sets it), so that code planning per-row work (the largest top_k,
    vocab_parallel_sampling's gathers) needs no device sync."""

    temperature_B: torch.Tensor
    seeds_B: torch.Tensor
    steps_B: torch.Tensor
    top_k_B: torch.Tensor | None = None
    top_p_B: torch.Tensor | None = None
    all_greedy: bool = False  # every row has T == 0: plain argmax, with no [B, V] noise draw or sort
    params: tuple[SamplingParams, ...] = ()

    @classmethod
    def from_rows(cls, params: Sequence[SamplingParams], seeds: Sequence[int], steps: Sequence[int],
                  device: torch.device | str = "cpu") -> SamplingBatch:
        """Row b samples with params[b], noise seed seeds[b] (completion_seeds) at completion step steps[b]."""
        if not len(params) == len(seeds) == len(steps):
            raise ValueError(f"SamplingBatch.from_rows: params, seeds and steps must have one entry per row, got "
                             f"{len(params)}, {len(seeds)} and {len(steps)}")
        top_k = [p.top_k for p in params]
        top_p = [p.top_p for p in params]
        return cls(
            temperature_B=torch.tensor([float(p.temperature) for p in params], dtype=torch.float32, device=device),
            seeds_B=torch.tensor(list(seeds), dtype=torch.int64, device=device),
            steps_B=torch.tensor(list(steps), dtype=torch.int64, device=device),
            top_k_B=torch.tensor(top_k, dtype=torch.int64, device=device) if any(top_k) else None,
            top_p_B=torch.tensor(top_p, dtype=torch.float32, device=device) if min(top_p, default=1) < 1 else None,
            all_greedy=all(p.temperature == 0 for p in params), params=tuple(params))

    @property
    def max_top_k(self) -> int | None:
        """The largest top_k of the rows, from the host-side params (None when the batch was built without)."""
        return max((p.top_k for p in self.params), default=0) if self.params else None

    def sample(self, logits_BV: torch.Tensor, impl: SamplingImpl = SamplingImpl.AUTO) -> SampleOutput:
        # an all-greedy batch skips the truncation: it always keeps the argmax (NaN wins, ties to the lowest id)
        top_k_B, top_p_B = (None, None) if self.all_greedy else (self.top_k_B, self.top_p_B)
        return _sample(logits_BV, self.temperature_B, self.seeds_B, self.steps_B, top_k_B, top_p_B, impl,
                       self.max_top_k)
