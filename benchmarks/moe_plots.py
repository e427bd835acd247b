"""PNG plots of a moe_ep_scaling.py JSON: throughput vs EP (weak, strong), time split per phase, expert load
imbalance per layer, and the communication model's projection beside the measured points. matplotlib's object
API (Figure + savefig, Agg), as r1_megatron/plotting.py uses it: no pyplot backend is switched."""
from __future__ import annotations

from pathlib import Path

PHASE_LABELS = ("dispatch_preprocess", "token_dispatch", "dispatch_postprocess", "combine_preprocess",
                "token_combine", "combine_postprocess")


def _figure(**kwargs):
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    return path


def _series(points: list[dict]) -> dict:
    """(dispatcher, world, tp, etp) -> points sorted by EP."""
    groups = {}
    for p in points:
        groups.setdefault((p["dispatcher"], p["world_size"], p["tp"], p["etp"]), []).append(p)
    return {k: sorted(v, key=lambda p: p["ep"]) for k, v in sorted(groups.items())}


def throughput(points: list[dict], path: Path) -> Path:
    fig = _figure(figsize=(12, 4.5))
    for ax, scaling in zip(fig.subplots(1, 2), ("weak", "strong")):
        for (dispatcher, world, tp, etp), series in _series([p for p in points if p["scaling"] == scaling]).items():
            eps = [p["ep"] for p in series]
            label = f"{dispatcher} W{world} TP{tp} ETP{etp}"
            ax.plot(eps, [p["forward_tokens_per_s"] for p in series], marker="o", label=f"{label} fwd")
            ax.plot(eps, [p["backward_tokens_per_s"] for p in series], marker="s", linestyle="--", label=f"{label} bwd")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("EP size")
        ax.set_ylabel("global tokens/s")
        ax.set_title(f"{scaling} scaling")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    return _save(fig, path)


def time_split(points: list[dict], path: Path) -> Path:
    """Stacked seconds per point: the six dispatcher phases, the rest of the forward (router, experts, norms),
    the backward."""
    fig = _figure(figsize=(max(8, 0.6 * len(points)), 5))
    ax = fig.add_subplot()
    labels = [f"{p['dispatcher'][:4]} {p['scaling'][0]} W{p['world_size']}\nTP{p['tp']} EP{p['ep']} ETP{p['etp']}"
              for p in points]
    bottom = [0.0] * len(points)
    parts = [(name, [p["phase_s"][name] for p in points]) for name in PHASE_LABELS]
    parts.append(("rest of forward", [p["forward_s"] - sum(p["phase_s"].values()) for p in points]))
    parts.append(("backward", [p["backward_s"] for p in points]))
    for name, values in parts:
        values = [max(0.0, v) for v in values]
        ax.bar(range(len(points)), values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(points)), labels, fontsize=6, rotation=90)
    ax.set_ylabel("seconds per step (slowest rank)")
    ax.set_title("time split per phase")
    ax.legend(fontsize="x-small")
    return _save(fig, path)


def imbalance(points: list[dict], path: Path) -> Path:
    fig = _figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for p in points:
        if p["scaling"] != "weak":
            continue
        layers = p["imbalance"]
        ax.plot([x["layer"] for x in layers], [x["max_over_mean"] for x in layers], marker="o",
                label=f"{p['dispatcher']} W{p['world_size']} EP{p['ep']}")
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("max / mean tokens per expert")
    ax.set_title("expert load imbalance (weak-scaling points)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small")
    return _save(fig, path)


def projection(data: dict, path: Path) -> Path:
    """Left: the model's projected MoE-layer comm and step time per training step, 8-512 GPUs. Right: the CPU
    points, the model's predicted comm time (counted bytes / measured all_to_all bandwidth) vs measured."""
    fig = _figure(figsize=(13, 4.8))
    left, right = fig.subplots(1, 2)
    rows = data["projection"]["table"]
    for shape in sorted({r["shape"] for r in rows}):
        for dispatch, style in (("alltoall", "-"), ("deepep_dedup", ":")):
            series = [r for r in rows if r["shape"] == shape and r["dispatch"] == dispatch]
            gpus = [r["gpus"] for r in series]
            left.plot(gpus, [r["comm_s"] for r in series], linestyle=style, marker="o", label=f"{shape} {dispatch} comm")
            left.plot(gpus, [r["step_s"] for r in series], linestyle=style, marker="x",
                      label=f"{shape} {dispatch} comm+compute")
    hw = data["projection"]["hardware"]
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("GPUs (EP = GPUs, 8 per node)")
    left.set_ylabel("seconds per step (MoE layers, projected)")
    left.set_title(f"projection: {hw['name']}, NVLink {hw['nvlink'] / 1e9:.0f} GB/s, IB {hw['ib'] / 1e9:.0f} GB/s, "
                   f"MFU {data['projection']['mfu']}", fontsize=9)
    left.grid(True, alpha=0.3)
    left.legend(fontsize="xx-small")
    measured = [p for p in data["points"] if p.get("predicted_comm_s") and p["scaling"] == "weak"]
    for (dispatcher, world, tp, etp), series in _series(measured).items():
        eps = [p["ep"] for p in series]
        right.plot(eps, [p["measured_comm_s"] for p in series], marker="o", label=f"{dispatcher} W{world} measured")
        right.plot(eps, [p["predicted_comm_s"] for p in series], marker="x", linestyle="--",
                   label=f"{dispatcher} W{world} model")
    right.set_xscale("log", base=2)
    right.set_xlabel("EP size")
    right.set_ylabel("forward dispatch + combine seconds (weak points)")
    right.set_title(f"measured here ({data['env']['backend']}, {data['env']['device']}): says nothing about GPUs",
                    fontsize=9)
    right.grid(True, alpha=0.3)
    right.legend(fontsize="xx-small")
    return _save(fig, path)


def write_plots(data: dict, stem: Path) -> list[Path]:
    """<stem>_throughput.png, _time_split.png, _imbalance.png, _projection.png."""
    points = data["points"]
    return [throughput(points, Path(f"{stem}_throughput.png")), time_split(points, Path(f"{stem}_time_split.png")),
            imbalance(points, Path(f"{stem}_imbalance.png")), projection(data, Path(f"{stem}_projection.png"))]
