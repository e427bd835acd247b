"""MoE routers during RL (docs/moe_rl.md): the `router:` section of a GRPO run (routing replay and the RL-safe
router settings) and the per-step router health metrics. A dense policy has no routers: nothing here changes it.

Why RL needs its own router settings: the load-balancing loss and the aux-free expert-bias update exist to
spread pretraining tokens over the experts; during RL they move the routing between the rollout and the update
(the bias update changes which experts the next rollout's tokens reach, independently of the reward), and an
extra loss term competes with the policy gradient. Routing in low precision flips near-tied top-k choices
between the engine's and the trainer's forward. So RL runs with the balancing loss off, the bias frozen
(update rate 0) and the router in fp32 (or fp64), as NeMo-RL does; each is configurable.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from r1_megatron.kernels.options import parse_enum
from r1_megatron.models.config import ROUTER_DTYPES
from r1_megatron.models.routing_replay import RoutingAgreement, RoutingMode, moe_routers, routing_control
from r1_megatron.training.step import unwrap


@dataclasses.dataclass
class RouterRLConfig:
    """replay: `replay` routes the training forwards of a rollout (old-logprob recompute, reference, policy) to the
    experts recorded while generating it (R3), `measure` records and compares but routes freely, `off` records
    nothing (the host keeps L × k bytes per token of each rollout sequence: 464 B for DeepSeek-V3's 58 MoE layers).
    dtype: the router's logits, scores and top-k (fp32 or fp64; fp64 as NeMo-RL, at the cost of an fp64 copy of
    the permuted expert outputs in Megatron's unpermute). aux_loss_coeff: the sequence-wise load-balancing loss
    during RL (0: off). bias_update_rate: the aux-free expert-bias step per optimizer step (0: frozen)."""

    replay: RoutingMode = RoutingMode.REPLAY
    dtype: str = "fp32"
    aux_loss_coeff: float = 0.0
    bias_update_rate: float = 0.0

    def __post_init__(self):
        self.replay = parse_enum(RoutingMode, self.replay, "router.replay")
        if self.dtype not in ROUTER_DTYPES:
            raise ValueError(f"router.dtype must be one of {', '.join(ROUTER_DTYPES)}, got {self.dtype!r}")
        for name in ("aux_loss_coeff", "bias_update_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"router.{name} must be a number >= 0, got {value!r}")


def apply_router_settings(model, cfg: RouterRLConfig) -> None:
    """Put the RL router settings on a built policy: its ModelConfig (so that models built from it, the
    reference, have them too) and the TransformerConfig its routers and Megatron's gradient finalisation read at
    every forward and optimizer step (moe_router_dtype, moe_aux_loss_coeff, moe_router_bias_update_rate)."""
    core = unwrap(model)
    if not core.model_config.has_moe:
        return
    moe = dataclasses.replace(core.model_config.moe, router_dtype=cfg.dtype, aux_loss_coeff=float(cfg.aux_loss_coeff),
                              bias_update_rate=float(cfg.bias_update_rate))
    core.model_config = dataclasses.replace(core.model_config, moe=moe)
    balancing = "seq_aux_loss" if cfg.aux_loss_coeff > 0 else "none"  # as models/config.py maps it
    config = core.config
    config.moe_router_dtype, config.moe_aux_loss_coeff = cfg.dtype, float(cfg.aux_loss_coeff)
    config.moe_router_bias_update_rate, config.moe_router_load_balancing_type = float(cfg.bias_update_rate), balancing
    for router in moe_routers(core):
        router.routing_type = balancing  # read by the router at each forward; set from the config at build time


def set_routing_mode(model, mode: RoutingMode) -> None:
    """How `model`'s training forwards treat a micro-batch's recorded routing (models/routing_replay.py)."""
    routing_control(unwrap(model)).mode = mode


class RouterHealth:
    """The step's router metrics (docs/moe_rl.md), all under router/:
    agreement (and per layer agreement/layer_N, min agreement_min): of the on-policy training forward's
    token-expert choices, the fraction equal to the rollout's (as sets per token; before replay overrides them),
    and disagreements, their count; imbalance/layer_N: max / mean tokens per expert of the step's rollout tokens
    (what the training forward routes: with replay exactly), top_expert_tokens/layer_N: the most-loaded expert's
    tokens, imbalance_max / imbalance_mean over layers; bias_drift_max / bias_drift_mean: |Δ expert bias| of the
    step's updates. Over data-parallel ranks; with pipeline parallelism every stage's layers."""

    def __init__(self, model, mode: RoutingMode):
        core = unwrap(model)
        self.core, self.mode = core, mode
        self.routers = moe_routers(core)
        self.layers = [int(r.layer_number) for r in self.routers]
        self.num_experts = self.routers[0].config.num_moe_experts if self.routers else 0
        self.device = next(core.parameters()).device
        self._bias_start = None
        self._load_LE = torch.zeros(len(self.routers), self.num_experts, dtype=torch.float64)
        self._agreement = RoutingAgreement(len(self.routers), self.device)
        set_routing_mode(core, mode)

    def begin_step(self) -> None:
        self._bias_start = self._biases()
        self._load_LE.zero_()
        self._agreement = RoutingAgreement(len(self.routers), self.device)

    @contextlib.contextmanager
    def measuring(self):
        """Count the agreement of the training forwards run inside (the step's on-policy pass)."""
        control = routing_control(self.core)
        control.agreement = self._agreement if self.mode.records else None
        try:
            yield
        finally:
            control.agreement = None

    def add_rollout(self, routings: list[torch.Tensor | None]) -> None:
        """Count the experts of the rollout's recorded routing ([n, L, k] per sequence) per layer."""
        recorded = [r for r in routings if r is not None and r.numel()]
        if not recorded:
            return
        experts_LM = torch.cat(recorded).long().permute(1, 0, 2).reshape(len(self.routers), -1)
        self._load_LE.scatter_add_(1, experts_LM, torch.ones_like(experts_LM, dtype=torch.float64))

    def metrics(self, dp_group) -> dict[str, float]:
        """The step's metrics, the same on every rank (collective over the data- and pipeline-parallel groups)."""
        if not self.core.model_config.has_moe:  # the whole model's property: every rank returns here or none does
            return {}
        per_layer = self._agreement_metrics(dp_group) | self._bias_metrics()
        if self.mode.records:
            per_layer |= self._load_metrics(dp_group)
        return _with_aggregates(_over_pipeline(per_layer))

    # ------------------------------------------------------------------------------------------- helpers

    def _biases(self) -> torch.Tensor | None:
        if not self.routers or self.routers[0].expert_bias is None:
            return None
        return torch.stack([r.expert_bias.detach().float() for r in self.routers]).cpu()

    def _agreement_metrics(self, dp_group) -> dict[str, float]:
        if not self.mode.records:
            return {}
        counts_2L = torch.stack([self._agreement.same_L, self._agreement.choices_L])
        if self.core.config.sequence_parallel:  # each TP rank routed its own chunk of the tokens
            dist.all_reduce(counts_2L, group=parallel_state.get_tensor_model_parallel_group())
        counts_2L = _sum_over(counts_2L.cpu(), dp_group)
        out = {}
        for layer, same, choices in zip(self.layers, *counts_2L.tolist()):
            out[f"router/same/layer_{layer}"], out[f"router/choices/layer_{layer}"] = same, choices
        return out

    def _load_metrics(self, dp_group) -> dict[str, float]:
        load_LE = _sum_over(self._load_LE, dp_group)
        out = {}
        for layer, load_E in zip(self.layers, load_LE):
            mean = float(load_E.mean())
            out[f"router/imbalance/layer_{layer}"] = float(load_E.max()) / mean if mean else 0.0
            out[f"router/top_expert_tokens/layer_{layer}"] = float(load_E.max())
        return out

    def _bias_metrics(self) -> dict[str, float]:
        end = self._biases()
        if end is None or self._bias_start is None:
            return {}
        drift_LE = (end - self._bias_start).abs()
        return {f"router/bias_drift/layer_{layer}": float(d.max()) for layer, d in zip(self.layers, drift_LE)}


def _sum_over(values: torch.Tensor, group) -> torch.Tensor:
    if group is not None and dist.is_initialized() and dist.get_world_size(group) > 1:
        values = values.clone()
        dist.all_reduce(values, group=group)
    return values


def _over_pipeline(per_layer: dict[str, float]) -> dict[str, float]:
    """Every pipeline stage's per-layer metrics (layer numbers are global: the keys do not collide)."""
    if not parallel_state.model_parallel_is_initialized() or \
            parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return per_layer
    gathered = [None] * parallel_state.get_pipeline_model_parallel_world_size()
    dist.all_gather_object(gathered, per_layer, group=parallel_state.get_pipeline_model_parallel_group())
    return {k: v for stage in gathered for k, v in stage.items()}


def _with_aggregates(per_layer: dict[str, float]) -> dict[str, float]:
    """The logged metrics: per-layer agreement, imbalance, top-expert tokens and bias drift, with their
    aggregates over layers (the raw same/choices counts are folded into agreement)."""
    out = {k: v for k, v in per_layer.items() if not k.startswith(("router/same/", "router/choices/"))}
    same = {k.rsplit("_", 1)[1]: v for k, v in per_layer.items() if k.startswith("router/same/")}
    choices = {k.rsplit("_", 1)[1]: v for k, v in per_layer.items() if k.startswith("router/choices/")}
    if choices:
        for layer, c in choices.items():
            out[f"router/agreement/layer_{layer}"] = same[layer] / c if c else 1.0
        total = sum(choices.values())
        out["router/agreement"] = sum(same.values()) / total if total else 1.0
        out["router/agreement_min"] = min(out[f"router/agreement/layer_{layer}"] for layer in choices)
        out["router/disagreements"] = total - sum(same.values())
    for name, agg in (("imbalance", "imbalance"), ("bias_drift", "bias_drift")):
        values = [v for k, v in per_layer.items() if k.startswith(f"router/{name}/")]
        if values:
            out[f"router/{agg}_max"] = max(values)
            out[f"router/{agg}_mean"] = sum(values) / len(values)
    return out
