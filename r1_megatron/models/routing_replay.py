"""Routing replay (R3): record the experts each token was routed to while generating, and route the training
forwards of that rollout (old-logprob recompute, reference and policy passes) to the same experts.

Why: the engine computes a token's hidden state incrementally (prefill chunks, then one token per decode step
against the KV cache) and the trainer all at once; in bf16 the two differ by rounding, and wherever a token's
k-th and (k+1)-th expert scores are that close the two forwards pick different experts. The trainer's logprob
then comes from a different network than the one that sampled the token, which inflates the train/rollout
mismatch and the clipped fraction (docs/moe_rl.md). Replaying the recorded experts removes that source; the
gate weights are still the trainer's own (the recorded experts' scores, gathered from its router), so the router
keeps its gradient.

Every MoE layer's DeepSeekTopKRouter (models/router.py) has a RouterHook; a session set on the hooks sees each
top-k selection:
    - RoutingRecorder (the engine): copies the selected experts [N, k] of the forward's N tokens into a static
      device buffer [L, N_max, k] (CUDA-graph safe: the copy is part of a captured decode graph), which the model
      runner hands to each sequence's RoutingTrace after the forward;
    - RoutingReplay (one training micro-batch): the recorded experts in the router's token order, -1 where a
      token has none (padding, empty rows); counts how many of the choices the router would have made anyway
      (RoutingAgreement), and with replay on returns the recorded experts instead.
Layer axis L: this rank's MoE layers in module order (its pipeline stage's), the same on the engine and the
trainer side of one rank, and on the reference model (same architecture and layout).
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum

import torch
from megatron.core import parallel_state

from r1_megatron.models.router import DeepSeekTopKRouter


class RoutingMode(str, enum.Enum):
    OFF = "off"  # nothing recorded
    MEASURE = "measure"  # record, route the training forwards freely, count agreement
    REPLAY = "replay"  # record, route the training forwards to the recorded experts (counting agreement)

    @property
    def records(self) -> bool:
        return self is not RoutingMode.OFF

    @classmethod
    def _missing_(cls, value):
        """YAML reads a bare `off` / `on` as false / true."""
        if isinstance(value, bool):
            return cls.REPLAY if value else cls.OFF
        return None


def moe_routers(model) -> list[DeepSeekTopKRouter]:
    """This rank's MoE routers in layer order (model: a GPTModel, or any module holding one); found once per model
    (a built model's modules do not change), since every training forward asks."""
    found = model.__dict__.get("_moe_routers")
    if found is None:
        found = [m for m in model.modules() if isinstance(m, DeepSeekTopKRouter)]
        model.__dict__["_moe_routers"] = found
    return found


def storage_dtype(num_experts: int) -> torch.dtype:
    """The smallest integer dtype that holds every expert id and the "none" value -1 of a micro-batch."""
    return torch.uint8 if num_experts <= 256 else torch.int16


@contextlib.contextmanager
def routing_session(model, session):
    """Route every MoE layer of `model` through `session` inside the block (nothing changes without MoE)."""
    hooks = [router.router_replay for router in moe_routers(model)]
    for slot, hook in enumerate(hooks):
        hook.slot, hook.session = slot, session
    try:
        yield session
    finally:
        for hook in hooks:
            hook.session = None


class RoutingRecorder:
    """The engine's session: the top-k experts of each layer for the tokens of the last forward."""

    def __init__(self, model, max_tokens: int, device: torch.device):
        routers = moe_routers(model)
        self.num_layers = len(routers)
        self.topk = routers[0].topk if routers else 0
        self.dtype = storage_dtype(routers[0].config.num_moe_experts if routers else 1)
        self.buffer_LNK = torch.zeros(self.num_layers, max_tokens, self.topk, dtype=torch.int16, device=device)

    def route(self, slot: int, scores_NE, values_NK, experts_NK):
        self.buffer_LNK[slot, :experts_NK.shape[0]].copy_(experts_NK)
        return values_NK, experts_NK

    def rows(self, num_tokens: int) -> torch.Tensor:
        """[N, L, k] experts of the last forward's first N tokens, on the host, in the storage dtype."""
        return self.buffer_LNK[:, :num_tokens].permute(1, 0, 2).to("cpu", self.dtype)


class RoutingAgreement:
    """Per layer: of the token-expert choices with a recorded expert set, how many the training forward's own
    top-k also chose (as sets: the order within a token's k does not matter). Device counters, read once."""

    def __init__(self, num_layers: int, device: torch.device):
        self.same_L = torch.zeros(num_layers, dtype=torch.float64, device=device)
        self.choices_L = torch.zeros(num_layers, dtype=torch.float64, device=device)

    def add(self, slot: int, experts_NK, recorded_NK, known_N) -> None:
        same_NK = (experts_NK[:, :, None] == recorded_NK[:, None, :]).any(-1) & known_N[:, None]
        self.same_L[slot] += same_NK.sum()
        self.choices_L[slot] += known_N.sum() * experts_NK.shape[1]

    def fractions(self) -> list[float]:
        """Agreement per layer (1.0 for a layer that saw no recorded token)."""
        same, choices = self.same_L.tolist(), self.choices_L.tolist()
        return [s / c if c else 1.0 for s, c in zip(same, choices)]


@dataclasses.dataclass
class RoutingReplay:
    """One training forward's session. recorded_LNK: per layer, the experts recorded for the forward's N tokens
    in the router's order (int64, -1 where none); replay: route to them; agreement: counters to add to."""

    recorded_LNK: torch.Tensor
    replay: bool
    agreement: RoutingAgreement | None = None

    def route(self, slot: int, scores_NE, values_NK, experts_NK):
        recorded_NK = self.recorded_LNK[slot]
        if recorded_NK.shape != experts_NK.shape:
            raise RuntimeError(f"routing replay: layer slot {slot} routes {tuple(experts_NK.shape)} token-expert "
                               f"choices, the recorded routing has {tuple(recorded_NK.shape)}")
        known_N = recorded_NK[:, 0] >= 0
        if self.agreement is not None:
            self.agreement.add(slot, experts_NK, recorded_NK, known_N)
        if not self.replay:
            return values_NK, experts_NK
        experts_NK = torch.where(known_N[:, None], recorded_NK, experts_NK)
        # the trainer's own scores of the replayed experts: Megatron normalises and scales them as usual
        return scores_NE.gather(1, experts_NK), experts_NK


def router_order(routing_BTLK: torch.Tensor, *, flattened: bool, sequence_parallel_rank: int | None,
                 tp_size: int) -> torch.Tensor:
    """[L, N, k] int64: a micro-batch's recorded routing [B, T, L, k] in the order the routers see its tokens.

    The MoE layers get hidden states [T, B, H] (token t·B + b), or [B·T, 1, H] for a THD forward (`flattened`,
    token b·T + t); with sequence parallelism, TP rank r routes the r-th of tp_size equal contiguous chunks."""
    B, T, L, k = routing_BTLK.shape
    flat_NLK = routing_BTLK.reshape(B * T, L, k) if flattened else routing_BTLK.transpose(0, 1).reshape(T * B, L, k)
    if sequence_parallel_rank is not None:
        chunk = flat_NLK.shape[0] // tp_size
        flat_NLK = flat_NLK[sequence_parallel_rank * chunk:(sequence_parallel_rank + 1) * chunk]
    return flat_NLK.permute(1, 0, 2).long()


@dataclasses.dataclass
class RoutingControl:
    """What a model's training forwards do with a micro-batch's recorded routing (extras["routing"]): the mode,
    and the agreement counters the caller wants filled (None: not counted)."""

    mode: RoutingMode = RoutingMode.OFF
    agreement: RoutingAgreement | None = None


def routing_control(model) -> RoutingControl:
    """The model's RoutingControl (created OFF on first use); model: the GPTModel (unwrapped)."""
    if not hasattr(model, "_routing_control"):
        model._routing_control = RoutingControl()
    return model._routing_control


def replay_for(model, routing_BTLK: torch.Tensor | None, *, flattened: bool):
    """The routing session of one training forward of `model` (GPTModel) on a micro-batch with recorded routing
    [B, T, L, k] (None: no record), or a null context when its control is OFF or there is nothing to replay."""
    control = routing_control(model)
    if routing_BTLK is None or control.mode is RoutingMode.OFF:
        return contextlib.nullcontext()
    config = model.config
    if getattr(config, "context_parallel_size", 1) != 1:
        raise NotImplementedError("routing replay with context parallelism")
    if config.recompute_granularity is not None:  # the recomputed forward would run outside the session
        raise NotImplementedError("routing replay with activation recomputation")
    sp_rank = parallel_state.get_tensor_model_parallel_rank() if config.sequence_parallel else None
    recorded_LNK = router_order(routing_BTLK, flattened=flattened, sequence_parallel_rank=sp_rank,
                                tp_size=config.tensor_model_parallel_size)
    layers = len(moe_routers(model))
    if recorded_LNK.shape[0] != layers:
        raise ValueError(f"routing replay: the micro-batch's routing has {recorded_LNK.shape[0]} MoE layers, this "
                         f"model (stage) has {layers}")
    session = RoutingReplay(recorded_LNK, replay=control.mode is RoutingMode.REPLAY, agreement=control.agreement)
    return routing_session(model, session)
