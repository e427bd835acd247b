"""The project's TopKRouter, entering Megatron through MoESubmodules.router: DeepSeek-V3's group-limited top-k,
and the slot where a routing session (models/routing_replay.py) records or replays the experts chosen."""
from __future__ import annotations

import torch
from megatron.core.transformer.moe.router import TopKRouter


def deepseek_group_topk(scores_TE: torch.Tensor, topk: int, num_groups: int | None, group_topk: int | None):
    """Top-k experts restricted to the best `group_topk` groups; (values [T, k], indices [T, k]).

    A group's score is the sum of its top-2 (bias-corrected) expert scores, as in DeepSeek-V3 and HF. Megatron's
    stock group_limited_topk sums the top (topk // group_topk) instead, which agrees only when that equals 2.
    Without groups this is torch.topk, exactly Megatron's own ungrouped top-k.
    """
    if not group_topk:
        return torch.topk(scores_TE, k=topk, dim=-1)
    num_tokens, num_experts = scores_TE.shape
    group_scores_TG = scores_TE.view(num_tokens, num_groups, -1).topk(2, dim=-1).values.sum(-1)
    best_groups_TK = group_scores_TG.topk(group_topk, dim=-1, sorted=False).indices
    group_mask_TG = torch.zeros_like(group_scores_TG, dtype=torch.bool).scatter_(1, best_groups_TK, True)
    expert_mask_TE = group_mask_TG.repeat_interleave(num_experts // num_groups, dim=1)
    return torch.topk(scores_TE.masked_fill(~expert_mask_TE, float("-inf")), k=topk, dim=-1)


class RouterHook:
    """The object Megatron's topk_routing_with_score_function calls as `router_replay.get_replay_topk` for the
    top-k selection: our group top-k, then the active routing session's `route` (None: route freely).
    `slot` is the router's index among this rank's MoE layers (the layer axis of recorded routing)."""

    def __init__(self):
        self.session = None
        self.slot = 0

    def get_replay_topk(self, scores, topk, num_groups=None, group_topk=None, default_compute_topk=None):
        values_TK, experts_TK = deepseek_group_topk(scores, topk, num_groups, group_topk)
        if self.session is None:
            return values_TK, experts_TK
        return self.session.route(self.slot, scores, values_TK, experts_TK)


class DeepSeekTopKRouter(TopKRouter):
    """TopKRouter with DeepSeek's group score and the routing-session hook. Everything else (sigmoid or softmax,
    expert bias and its update, normalisation, routed scaling factor, aux losses) stays Megatron's own code."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.config.moe_enable_routing_replay:
            raise ValueError("DeepSeekTopKRouter uses the router-replay hook itself (models/routing_replay.py); "
                             "moe_enable_routing_replay must be off")
        self.router_replay = RouterHook()
