"""The MoE expert-parallel communication model (docs/moe_scaling.md): bytes per token and per step, exactly from a
step's routing for Megatron's dispatchers, in expectation under uniform routing, and a step-time projection from
8 to 512 GPUs. Pure functions; every formula is in its docstring.

Counting convention (the harness counts the same way, benchmarks/moe_instrument.py): the bytes a rank sends to
OTHER ranks and receives from them, as the payload of the collective (a ring or tree algorithm may forward more);
its own chunk of a collective is not counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

PROBS_BYTES = 4  # routing probabilities: moe_router_dtype="fp32" (models/config.py)
COUNT_BYTES = 8  # the alltoall dispatcher's tokens-per-expert counts are int64
MAP_BYTES = 1  # the allgather dispatcher gathers the boolean routing map


def _local_experts(index: int, num_experts: int, ep: int) -> range:
    per_rank = num_experts // ep
    return range(index * per_rank, (index + 1) * per_rank)


def alltoall_layer_bytes(counts_RE: list[list[int]], index: int, hidden: int, dtype_bytes: int) -> dict:
    """Bytes one EP rank sends/receives in one MoE layer's forward and backward with Megatron's alltoall
    dispatcher (TP = ETP = 1). counts_RE[j][e]: the (token, expert) pairs of EP rank j routed to expert e; rank j
    holds experts j·E/EP .. (j+1)·E/EP − 1; `index` is this rank's place in its EP group.

        out_pairs = Σ_{e not on me} c[me][e]        in_pairs = Σ_{j ≠ me} Σ_{e on me} c[j][e]
        metadata (all-gather of the int64 counts [E]):  sent = recv = 8·E·(EP−1)
        dispatch tokens: sent = out_pairs·H·b,  recv = in_pairs·H·b;  probs: the same pairs × 4 B (fp32)
        combine tokens:  sent = in_pairs·H·b,   recv = out_pairs·H·b
        backward: each all-to-all runs reversed (combine's grads out_pairs·H·b sent, dispatch's in_pairs·H·b,
                  the probs' grads in_pairs·4); the counts have no gradient.
    Returns {phase: (sent, received)} for phases metadata, dispatch, combine, backward.
    """
    ep, num_experts = len(counts_RE), len(counts_RE[0])
    if ep == 1:
        return {"metadata": (0, 0), "dispatch": (0, 0), "combine": (0, 0), "backward": (0, 0)}
    mine = _local_experts(index, num_experts, ep)
    out_pairs = sum(c for e, c in enumerate(counts_RE[index]) if e not in mine)
    in_pairs = sum(counts_RE[j][e] for j in range(ep) if j != index for e in mine)
    meta = COUNT_BYTES * num_experts * (ep - 1)
    token = hidden * dtype_bytes
    return {
        "metadata": (meta, meta),
        "dispatch": (out_pairs * (token + PROBS_BYTES), in_pairs * (token + PROBS_BYTES)),
        "combine": (in_pairs * token, out_pairs * token),
        "backward": (out_pairs * token + in_pairs * (token + PROBS_BYTES),
                     in_pairs * token + out_pairs * (token + PROBS_BYTES)),
    }


def allgather_layer_bytes(tokens: int, num_experts: int, ep: int, hidden: int, dtype_bytes: int) -> dict:
    """Bytes one rank sends (= receives) in one MoE layer with Megatron's allgather dispatcher (TP = ETP = 1), T
    tokens on every rank. It gathers every token to every EP rank whatever the routing:

        dispatch: all-gather of the routing map T·E·1, the probs T·E·4 and the tokens T·H·b, each × (EP−1)
        combine:  reduce-scatter of the [EP·T, H] expert outputs in fp32 (Megatron casts to the probs' dtype):
                  (EP−1)·T·H·4
        backward: all-gather of the combine's fp32 grads (EP−1)·T·H·4, reduce-scatter of the token grads
                  (EP−1)·T·H·b and of the probs' grads (EP−1)·T·E·4 (the map has no gradient)
    Returns {phase: (sent, received)}.
    """
    k = ep - 1
    dispatch = k * tokens * (num_experts * (MAP_BYTES + PROBS_BYTES) + hidden * dtype_bytes)
    combine = k * tokens * hidden * PROBS_BYTES
    backward = k * tokens * (hidden * PROBS_BYTES + hidden * dtype_bytes + num_experts * PROBS_BYTES)
    return {"metadata": (0, 0), "dispatch": (dispatch, dispatch), "combine": (combine, combine),
            "backward": (backward, backward)}


def uniform_bytes_per_token(hidden: int, top_k: int, ep: int, dtype_bytes: int) -> float:
    """Expected all-to-all bytes one token sends per MoE layer forward (dispatch + combine), experts uniform:

        bytes/token = H × k × (EP−1)/EP × b × 2

    e.g. DeepSeek-V3 (H 7168, k 8, bf16) at EP 64: 7168·8·(63/64)·2·2 = 225,792 B ≈ 221 KiB per token per layer.
    """
    return hidden * top_k * (ep - 1) / ep * dtype_bytes * 2


def expected_nodes_reached(num_nodes: int, units: int, chosen: int) -> float:
    """Expected distinct nodes a token reaches when it picks `chosen` of `units` equally likely units (expert groups
    or experts) spread evenly over `num_nodes` nodes (units % num_nodes == 0), without replacement:

        E[nodes] = N · (1 − C(U − U/N, c) / C(U, c))

    For DeepSeek-V3's group-limited routing (8 groups, top-4 groups) on 8 nodes: 8·(1 − C(7,4)/C(8,4)) = 4 — the
    node limit M = 4. It assumes each chosen group receives at least one of the token's experts.
    """
    per_node = units // num_nodes
    return num_nodes * (1 - math.comb(units - per_node, chosen) / math.comb(units, chosen))


@dataclass(frozen=True)
class Shape:
    """One model's MoE layers, for the projection."""

    name: str
    hidden: int
    experts: int
    top_k: int
    moe_ffn: int
    shared: int
    groups: int | None  # expert groups of group-limited routing (None: no limit)
    group_topk: int | None
    moe_layers: int


SHAPES = {
    "dsv3": Shape("DeepSeek-V3", 7168, 256, 8, 2048, 1, 8, 4, 58),
    "moonlight": Shape("Moonlight-16B-A3B", 2048, 64, 6, 1408, 2, None, None, 26),
}


@dataclass(frozen=True)
class Hardware:
    """Per-GPU unidirectional bandwidths (bytes/s) and dense bf16 peak. Defaults: H800 — NVLink 400 GB/s
    bidirectional = 200 GB/s each way, InfiniBand 400 Gb/s per GPU = 50 GB/s each way (DeepSeek-V3 technical
    report, arXiv 2412.19437 §3.2); H100 SXM NVLink 900 GB/s bidirectional = 450 GB/s each way (NVIDIA's H100
    datasheet); both 989 TFLOP/s dense bf16 (datasheet)."""

    name: str = "H800"
    nvlink: float = 200e9
    ib: float = 50e9
    peak_flops: float = 989e12
    gpus_per_node: int = 8


H800 = Hardware()
H100 = Hardware(name="H100", nvlink=450e9)


def layer_comm_bytes(shape: Shape, gpus: int, gpus_per_node: int, dtype_bytes: int, dedup: bool) -> tuple:
    """(NVLink bytes, IB bytes) one token sends per MoE layer forward (dispatch + combine), EP = gpus, uniform routing.

    Per (token, expert) pair (Megatron alltoall, dedup=False): a pair's expert is on another GPU of the own node
    with probability (g−1)/P and on another node with probability (P−g)/P:
        NVLink = 2·k·H·b·(g−1)/P,   IB = 2·k·H·b·(P−g)/P
    Per node (DeepEP, dedup=True): a token crosses IB once per remote node it reaches, then fans out over NVLink:
        IB = 2·H·b·(E[nodes reached] − P(own node reached))  with E[nodes] from expected_nodes_reached over the
        expert groups when the model has them and N ≤ groups (else over experts); NVLink as above.
    """
    nodes = max(1, gpus // gpus_per_node)
    token = 2 * shape.hidden * dtype_bytes
    nvlink = token * shape.top_k * (min(gpus, gpus_per_node) - 1) / gpus
    if not dedup:
        return nvlink, token * shape.top_k * (gpus - min(gpus, gpus_per_node)) / gpus
    if nodes == 1:
        return nvlink, 0.0
    if shape.groups and nodes <= shape.groups:
        reached = expected_nodes_reached(nodes, shape.groups, shape.group_topk)
        own = 1 - math.comb(shape.groups - shape.groups // nodes, shape.group_topk) / math.comb(shape.groups, shape.group_topk)
    else:
        reached = expected_nodes_reached(nodes, shape.experts, shape.top_k)
        own = 1 - math.comb(shape.experts - shape.experts // nodes, shape.top_k) / math.comb(shape.experts, shape.top_k)
    return nvlink, token * (reached - own)


def layer_flops_per_token(shape: Shape) -> float:
    """Forward FLOPs of one MoE layer per token: (k + shared) gated experts of 3 H×F matmuls at 2 FLOPs per MAC:
    6·H·F·(k + s). DeepSeek-V3: 6·7168·2048·9 = 792.7 MFLOP."""
    return 6 * shape.hidden * shape.moe_ffn * (shape.top_k + shape.shared)


def project(shape: Shape, gpus: int, hardware: Hardware = H800, tokens_per_gpu: int = 4096, mfu: float = 0.4,
            dtype_bytes: int = 2, dedup: bool = False) -> dict:
    """Projected time of the MoE layers of one training step (forward + backward) per GPU, EP = gpus:

        comm = 2 (fwd + bwd) · T · layers · max(NVLink bytes / nvlink_bw, IB bytes / ib_bw)  (links run in parallel)
        compute = 3 (fwd + 2×bwd) · T · layers · flops/token / (peak · MFU)
        step = compute + comm (no overlap);  overlapped = max(compute, comm)
    """
    nvlink, ib = layer_comm_bytes(shape, gpus, hardware.gpus_per_node, dtype_bytes, dedup)
    comm = 2 * tokens_per_gpu * shape.moe_layers * max(nvlink / hardware.nvlink, ib / hardware.ib)
    compute = 3 * tokens_per_gpu * shape.moe_layers * layer_flops_per_token(shape) / (hardware.peak_flops * mfu)
    return {"gpus": gpus, "nvlink_bytes_per_token_layer": nvlink, "ib_bytes_per_token_layer": ib,
            "comm_s": comm, "compute_s": compute, "step_s": comm + compute, "overlapped_step_s": max(comm, compute)}


def projection_table(gpu_counts=(8, 16, 32, 64, 128, 256, 512), **kwargs) -> list[dict]:
    """project() for every shape × GPU count × {Megatron alltoall, DeepEP dedup}."""
    return [{"shape": key, "dispatch": "deepep_dedup" if dedup else "alltoall",
             **project(shape, gpus, dedup=dedup, **kwargs)}
            for key, shape in SHAPES.items() for dedup in (False, True) for gpus in gpu_counts]
