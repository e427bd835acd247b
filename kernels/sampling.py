"""Fused token sampling: temperature, the truncation threshold τ, Philox Gumbel-max and the token's logprob in one
pass over the (vocab-parallel) logits; dispatches Triton or reference.

The rule is rollout/sampler.py's (which computes τ, the one step that needs a sort); the noise contract is
r1_megatron/sampling_noise.py's. `sample_tokens` covers a full vocabulary; `sampling_partials` one vocab range
(a tensor-parallel shard) and `combine_sampling_partials` folds the ranges' partials, in any order, into the
token and its full-vocabulary logprob: exactly the token of `sample_tokens` on the concatenated logits.
"""
from __future__ import annotations

import torch

from r1_megatron import sampling_noise

from . import reference
from .backend import Backend, interpreting, select_backend, triton_available, triton_module


def sample_tokens(logits_BV: torch.Tensor, temperature_B: torch.Tensor, seeds_B: torch.Tensor, steps_B: torch.Tensor,
                  tau_B: torch.Tensor | None = None, *,
                  backend: Backend | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens_B int64, logprobs_B fp32): row b samples argmax_v(fp32(logit_v)/T_b + g(seed_b, step_b, v)) over
    the tokens with logit >= τ_b (greedy rows, T == 0: the argmax of the logits), and gets
    log_softmax(fp32(logits)/T')[token] over the whole vocabulary (T' = 1 when greedy). NaN logits win.

    logits_BV: fp32/bf16/fp16 [B, V]; temperature_B: [B] >= 0; seeds_B, steps_B: int [B]; tau_B: [B] or None
    (no truncation); backend: None picks with select_backend. The Triton path reads the logits once and makes no
    [B, V] intermediate; the reference (the CPU path) makes a few."""
    temperature_B, seeds_B, steps_B = _validated(logits_BV, temperature_B, seeds_B, steps_B, tau_B, 0)
    if _backend(backend, logits_BV) is Backend.TORCH:
        return reference.sample_tokens(logits_BV, temperature_B, seeds_B, steps_B, tau_B)
    return triton_module("sampling_triton").sample_tokens(logits_BV, temperature_B, seeds_B, steps_B, tau_B)


def sampling_partials(logits_BV: torch.Tensor, temperature_B: torch.Tensor, seeds_B: torch.Tensor,
                      steps_B: torch.Tensor, tau_B: torch.Tensor | None, vocab_start: int, vocab_end: int, *,
                      backend: Backend | None = None) -> torch.Tensor:
    """The 5 partials (see reference.sampling_partials) of token ids [vocab_start, vocab_end), held by the first
    vocab_end − vocab_start columns of logits_BV [B, V_local] (later columns, e.g. Megatron's vocab padding, are
    never read; vocab_end <= vocab_start is an empty range): fp64 [B, S, 5], S = 1 on the reference, the Triton
    path's vocab splits otherwise (the same S on every rank for the same V_local)."""
    temperature_B, seeds_B, steps_B = _validated(logits_BV, temperature_B, seeds_B, steps_B, tau_B, vocab_start)
    if vocab_end - vocab_start > logits_BV.shape[1]:
        raise ValueError(f"sampling_partials: [vocab_start, vocab_end) = [{vocab_start}, {vocab_end}) has more ids "
                         f"than logits_BV has columns ({logits_BV.shape[1]})")
    if _backend(backend, logits_BV) is Backend.TORCH:
        return reference.sampling_partials(logits_BV, temperature_B, seeds_B, steps_B, tau_B, vocab_start, vocab_end)
    return triton_module("sampling_triton").sampling_partials(logits_BV, temperature_B, seeds_B, steps_B, tau_B,
                                                              vocab_start, vocab_end)


def combine_sampling_partials(partials_BN5: torch.Tensor, *,
                              backend: Backend | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens_B int64, logprobs_B fp32) from the partials fp64 [B, N, 5] of N disjoint vocab ranges covering
    the vocabulary (e.g. every rank's `sampling_partials`, concatenated along N), in any order."""
    if partials_BN5.dim() != 3 or partials_BN5.shape[1] == 0 or partials_BN5.shape[2] != reference.SAMPLING_PARTIALS:
        raise ValueError(f"combine_sampling_partials: partials_BN5 must be [B, N > 0, "
                         f"{reference.SAMPLING_PARTIALS}], got {tuple(partials_BN5.shape)}")
    if _backend(backend, partials_BN5) is Backend.TORCH:
        return reference.combine_sampling_partials(partials_BN5.to(torch.float64))
    return triton_module("sampling_triton").combine_sampling_partials(partials_BN5.to(torch.float64))


def _backend(backend: Backend | None, tensor: torch.Tensor) -> Backend:
    if backend is None:
        return select_backend(tensor)
    backend = Backend(backend)
    if backend is Backend.TRITON and not (triton_available() and (tensor.is_cuda or interpreting())):
        raise RuntimeError(f"backend=triton needs triton and CUDA tensors (or TRITON_INTERPRET=1), got "
                           f"{tensor.device}, triton importable: {triton_available()}")
    return backend


def _validated(logits_BV, temperature_B, seeds_B, steps_B, tau_B, vocab_start):
    """(temperature fp32, seeds int64, steps int64), contiguous; ValueError naming a bad argument."""
    temperature_B, seeds_B, steps_B = sampling_noise.validated_rows(logits_BV, temperature_B, seeds_B, steps_B,
                                                                    vocab_start)
    if tau_B is not None and (tau_B.shape != temperature_B.shape or tau_B.device != logits_BV.device
                              or not tau_B.is_floating_point()):
        raise ValueError(f"tau_B must be None or a float tensor [{logits_BV.shape[0]}] on {logits_BV.device}, got "
                         f"{tau_B.dtype} {tuple(tau_B.shape)} on {tau_B.device}")
    return temperature_B.contiguous(), seeds_B.contiguous(), steps_B.contiguous()
