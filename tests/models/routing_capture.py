"""What the MoE routers of a forward really did, seen from outside the routing session: each router's output
routing_map [N, E] captured by forward hooks, compared with a micro-batch's recorded routing. Shared by the
single-process and the torchrun routing-replay tests."""
from __future__ import annotations

import torch
from megatron.core import parallel_state

from r1_megatron.models.routing_replay import moe_routers, router_order


def routed_experts(model, run):
    """(run(), the routing_map [N, E] of every router call, in call order)."""
    maps = []
    hooks = [r.register_forward_hook(lambda mod, inp, out: maps.append(out[1].detach().clone()))
             for r in moe_routers(model)]
    try:
        result = run()
    finally:
        for h in hooks:
            h.remove()
    return result, maps


def expert_sets(map_NE: torch.Tensor) -> list[set[int]]:
    """Each token's set of selected experts."""
    return [set(torch.nonzero(row).flatten().tolist()) for row in map_NE]


def replayed_counts(model, batches, maps) -> tuple[int, int]:
    """(tokens with a recorded expert set, those routed to exactly that set) over the router calls of one pass
    over `batches` (micro-batch by micro-batch, layer by layer), in each router's token order on this rank."""
    sp = model.config.sequence_parallel
    rank = parallel_state.get_tensor_model_parallel_rank() if sp else None
    layers, known, same = len(moe_routers(model)), 0, 0
    for i, mb in enumerate(batches):
        recorded_LNK = router_order(mb.extras["routing"], flattened=False, sequence_parallel_rank=rank,
                                    tp_size=model.config.tensor_model_parallel_size)
        for slot in range(layers):
            for used, experts in zip(expert_sets(maps[i * layers + slot]), recorded_LNK[slot].tolist()):
                if experts[0] >= 0:
                    known += 1
                    same += used == set(experts)
    return known, same
