"""MoE expert-parallel scaling harness (docs/moe_scaling.md): a DeepSeek-V3- or Moonlight-shaped stack of MoE layers
(Megatron's MoELayer and token dispatchers, benchmarks/moe_stack.py) swept over parallel layouts (TP, EP, ETP) and
dispatchers, weak (fixed tokens per data-parallel rank) and strong (fixed global tokens). Per point: forward and
backward tokens/s, time per dispatcher phase, bytes each rank moved (counted on the collectives and, for TP = ETP
= 1, checked against the exact formula of benchmarks/moe_comm_model.py), expert load imbalance per layer, peak
memory. Writes one JSON and PNG plots, with the communication model's 8-512 GPU projection.

    python benchmarks/moe_ep_scaling.py --world-sizes 4 --ep 1 2 4 --shape dsv3 --hidden 256 --experts 16 \
        --moe-ffn 128 --layers 2 --dtype fp32          # CPU (gloo): launches torchrun per world size
    torchrun --nproc-per-node 8 benchmarks/moe_ep_scaling.py --ep 1 2 4 8 --layers 4   # one GPU node (NCCL)
CPU/gloo figures say nothing about GPU speed: they show the harness and check the byte counts.
"""
from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from r1_megatron import child_processes  # noqa: E402

from bench_common import RESULTS_DIR, command_line, cpu_name, environment, package_version, write_payload  # noqa: E402
from moe_comm_model import H800, allgather_layer_bytes, alltoall_layer_bytes, projection_table  # noqa: E402
from moe_instrument import PHASES, StepRecorder, alltoall_bandwidth, count_collectives, instrument_dispatcher, \
    peak_memory  # noqa: E402
from moe_stack import DISPATCHERS, MoEStack, StackConfig, model_config, skew_routers, transformer_config  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=("dsv3", "moonlight"), default="dsv3")
    p.add_argument("--hidden", type=int, default=None, help="override the shape's hidden size")
    p.add_argument("--experts", type=int, default=None, help="override the number of routed experts")
    p.add_argument("--moe-ffn", type=int, default=None, help="override the experts' FFN width")
    p.add_argument("--layers", type=int, default=2, help="MoE layers in the stack")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--tp", type=int, nargs="+", default=[1])
    p.add_argument("--ep", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--etp", type=int, nargs="+", default=[1])
    p.add_argument("--dispatchers", nargs="+", choices=DISPATCHERS, default=list(DISPATCHERS))
    p.add_argument("--scaling", nargs="+", choices=("weak", "strong"), default=["weak", "strong"])
    p.add_argument("--tokens-per-rank", type=int, default=256, help="weak scaling: tokens per data-parallel rank")
    p.add_argument("--global-tokens", type=int, default=1024, help="strong scaling: tokens over all DP ranks")
    p.add_argument("--router-skew", type=float, default=0.0, help="selection bias added to 1/8 of the experts")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--world-sizes", type=int, nargs="+", default=None,
                   help="driver mode (not under torchrun): launch torchrun per world size and merge (gloo on CPU)")
    p.add_argument("--timeout", type=int, default=900, help="driver mode: seconds per torchrun launch")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/moe_ep_scaling_"
                                                          "<device>.json); PNGs next to it with the same stem")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--part-out", type=Path, default=None, help=argparse.SUPPRESS)  # the driver's per-launch file
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    return args


def stack_config(args) -> StackConfig:
    return StackConfig(shape=args.shape, layers=args.layers, hidden=args.hidden, experts=args.experts,
                       moe_ffn=args.moe_ffn, dtype=args.dtype)


def layouts(args, world: int, experts: int) -> list[tuple[int, int, int]]:
    """(tp, ep, etp) of the sweep that fit `world` ranks and divide the experts."""
    return [(tp, ep, etp) for tp in args.tp for ep in args.ep for etp in args.etp
            if world % tp == 0 and world % (ep * etp) == 0 and experts % ep == 0]


def tokens_per_dp_rank(args, scaling: str, dp: int) -> int:
    """Weak: --tokens-per-rank on every data-parallel rank. Strong: --global-tokens split over the DP ranks."""
    if scaling == "weak":
        return args.tokens_per_rank
    if args.global_tokens % dp:
        raise ValueError(f"--global-tokens {args.global_tokens} is not divisible by the data-parallel size {dp}")
    return args.global_tokens // dp


def _flex_unavailable() -> str | None:
    if importlib.util.find_spec("deep_ep") is None:
        return "deep_ep is not installed; Megatron's flex dispatcher needs DeepEP"
    return None if torch.cuda.is_available() else "the flex dispatcher (DeepEP) needs CUDA"


def _synchronize(device: str):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def _step(stack, x_SBH, recorder: StepRecorder, sync) -> tuple[float, float]:
    """One forward + backward; (forward s, backward s). Bytes and routing counts of this step land in recorder."""
    stack.zero_grad(set_to_none=True)
    recorder.reset()
    sync()
    start = time.perf_counter()
    out_SBH = stack(x_SBH)
    sync()
    middle = time.perf_counter()
    recorder.phase = "backward"
    out_SBH.float().square().mean().backward()
    sync()
    recorder.phase = None
    return middle - start, time.perf_counter() - middle


def measure_rank(args, layout, dispatcher: str, tokens: int, device: str) -> dict:
    """This rank's measurements of one point (collective: every rank calls it with the same arguments)."""
    from megatron.core import parallel_state

    from r1_megatron.runtime import ParallelConfig, initialize_parallel, seed_everything, world_max

    tp, ep, etp = layout
    parallel = initialize_parallel(ParallelConfig(tp=tp, ep=ep, etp=etp))
    seed_everything(args.seed)
    stack_cfg = stack_config(args)
    model = model_config(stack_cfg, dispatcher)
    stack = MoEStack(model, transformer_config(model, parallel, stack_cfg.torch_dtype, dispatcher)).to(device)
    if args.router_skew:
        skew_routers(stack, args.router_skew)
    sync = _synchronize(device)
    recorder = StepRecorder(sync)
    for moe in stack.moes:
        instrument_dispatcher(moe.token_dispatcher, recorder)
    # every DP rank its own tokens; with sequence parallelism each TP rank holds 1/TP of them
    generator = torch.Generator().manual_seed(args.seed + parallel_state.get_data_parallel_rank())
    x_SBH = torch.randn(tokens // tp, 1, model.hidden_size, generator=generator).to(device, stack_cfg.torch_dtype)
    x_SBH.requires_grad_(True)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fwd, bwd, phases = [], [], {name: [] for name in PHASES}
    with count_collectives(recorder):
        for i in range(args.warmup + args.repeats):
            recorder.active = True
            f, b = _step(stack, x_SBH, recorder, sync)
            if i >= args.warmup:
                fwd.append(f)
                bwd.append(b)
                for name in PHASES:
                    phases[name].append(recorder.seconds.get(name, 0.0))
    recorder.active = False
    ep_group = parallel_state.get_expert_model_parallel_group()
    moved = sum(v[0] for k, v in recorder.bytes.items() if k in ("dispatch", "combine")) // max(1, args.layers)
    # the message size of one layer's token all-to-all, so that the microbench sees the same latency share
    # (one size on every rank: the largest, as all_to_all needs matching sizes)
    bandwidth = alltoall_bandwidth(ep_group, max(1 << 16, world_max(moved) // 2), device)
    result = {
        "rank": dist.get_rank(), "ep_group": dist.get_process_group_ranks(ep_group),
        "ep_index": parallel_state.get_expert_model_parallel_rank(), "dp": parallel.data_parallel_size(
            dist.get_world_size()), "forward_s": statistics.median(fwd), "backward_s": statistics.median(bwd),
        "phase_s": {k: statistics.median(v) for k, v in phases.items()},
        "bytes": {k: {"sent": v[0], "received": v[1]} for k, v in sorted(recorder.bytes.items()) if v[0] or v[1]},
        "counts_LE": recorder.counts_LE, "memory": peak_memory(device), "alltoall_bandwidth_Bps": bandwidth}
    del stack, x_SBH
    gc.collect()
    return result


def formula_bytes(point: dict, rank: dict, by_rank: dict, stack_cfg: StackConfig, hidden: int) -> dict | None:
    """The exact bytes of moe_comm_model for this rank's step, summed over layers (TP = ETP = 1 only)."""
    if point["tp"] != 1 or point["etp"] != 1 or point["dispatcher"] == "flex":
        return None
    dtype_bytes = stack_cfg.torch_dtype.itemsize
    totals = {}
    for layer in range(len(rank["counts_LE"])):
        if point["dispatcher"] == "alltoall":
            counts_RE = [by_rank[r]["counts_LE"][layer] for r in rank["ep_group"]]
            per_layer = alltoall_layer_bytes(counts_RE, rank["ep_index"], hidden, dtype_bytes)
        else:
            per_layer = allgather_layer_bytes(point["tokens_per_dp_rank"], len(rank["counts_LE"][layer]),
                                              point["ep"], hidden, dtype_bytes)
        for phase, (sent, received) in per_layer.items():
            entry = totals.setdefault(phase, {"sent": 0, "received": 0})
            entry["sent"] += sent
            entry["received"] += received
    return {k: v for k, v in totals.items() if v["sent"] or v["received"]}


def imbalance(ranks: list[dict], ep: int) -> list[dict]:
    """Per layer: tokens per expert summed over all ranks, max/mean over experts, the busiest expert's tokens, and
    max/mean over EP ranks of the (token, expert) pairs an EP rank's experts receive."""
    layers = []
    for layer in range(len(ranks[0]["counts_LE"])):
        per_expert = [sum(col) for col in zip(*(r["counts_LE"][layer] for r in ranks))]
        mean = sum(per_expert) / len(per_expert)
        per_rank = [sum(per_expert[i * len(per_expert) // ep:(i + 1) * len(per_expert) // ep]) for i in range(ep)]
        layers.append({"layer": layer, "tokens_per_expert": per_expert, "max_over_mean": max(per_expert) / mean,
                       "max_tokens": max(per_expert),
                       "ep_rank_max_over_mean": max(per_rank) / (sum(per_rank) / ep)})
    return layers


def summarize(point: dict, ranks: list[dict], stack_cfg: StackConfig, hidden: int) -> dict:
    """The point's record: throughput from the slowest rank, every rank's bytes with the formula beside them."""
    by_rank = {r["rank"]: r for r in ranks}
    global_tokens = point["tokens_per_dp_rank"] * ranks[0]["dp"]
    fwd, bwd = max(r["forward_s"] for r in ranks), max(r["backward_s"] for r in ranks)
    for r in ranks:
        r["formula_bytes"] = formula_bytes(point, r, by_rank, stack_cfg, hidden)
        r["bytes_match_formula"] = None if r["formula_bytes"] is None else r["formula_bytes"] == r["bytes"]
    comm_s = max(r["phase_s"]["token_dispatch"] + r["phase_s"]["token_combine"] for r in ranks)
    bandwidths = [r["alltoall_bandwidth_Bps"] for r in ranks if r["alltoall_bandwidth_Bps"]]
    bandwidth = statistics.median(bandwidths) if bandwidths else None
    fwd_bytes = max(sum(r["bytes"].get(k, {}).get("sent", 0) for k in ("dispatch", "combine")) for r in ranks)
    return {**point, "dp": ranks[0]["dp"], "global_tokens": global_tokens,
            "forward_s": fwd, "backward_s": bwd, "forward_tokens_per_s": global_tokens / fwd,
            "backward_tokens_per_s": global_tokens / bwd,
            "phase_s": {k: max(r["phase_s"][k] for r in ranks) for k in PHASES},
            "measured_comm_s": comm_s, "alltoall_bandwidth_Bps": bandwidth,
            "predicted_comm_s": fwd_bytes / bandwidth if bandwidth else None,
            "bytes_match_formula": all(r["bytes_match_formula"] for r in ranks)
            if ranks[0]["bytes_match_formula"] is not None else None,
            "memory_MiB_max": max(r["memory"]["MiB"] for r in ranks), "memory_kind": ranks[0]["memory"]["kind"],
            "imbalance": imbalance(ranks, point["ep"]), "ranks": ranks}


def sweep(args, device: str) -> tuple[list[dict], list[dict]]:
    """Every point that fits this world; (points, skipped). Rank 0 returns the records, the others empty lists."""
    world = dist.get_world_size()
    stack_cfg = stack_config(args)
    model = model_config(stack_cfg, "alltoall")
    points, skipped = [], []
    for dispatcher in args.dispatchers:
        reason = _flex_unavailable() if dispatcher == "flex" else None
        if reason:
            skipped.append({"dispatcher": dispatcher, "world_size": world, "reason": reason})
            continue
        for scaling in args.scaling:
            for tp, ep, etp in layouts(args, world, model.moe.num_experts):
                tokens = tokens_per_dp_rank(args, scaling, world // tp)
                point = {"world_size": world, "dispatcher": dispatcher, "scaling": scaling, "tp": tp, "ep": ep,
                         "etp": etp, "tokens_per_dp_rank": tokens}
                gathered = [None] * world
                dist.all_gather_object(gathered, measure_rank(args, (tp, ep, etp), dispatcher, tokens, device))
                if dist.get_rank() == 0:
                    points.append(summarize(point, gathered, stack_cfg, model.hidden_size))
                    print(f"world {world} {dispatcher} {scaling} tp{tp} ep{ep} etp{etp}: fwd "
                          f"{points[-1]['forward_tokens_per_s']:.0f} tok/s, bytes match formula: "
                          f"{points[-1]['bytes_match_formula']}", flush=True)
    return points, skipped


def payload(args, points: list[dict], skipped: list[dict], device: str) -> dict:
    model = model_config(stack_config(args), "alltoall")
    return {
        "benchmark": "moe_ep_scaling",
        "env": {**environment(device), "command": command_line(__file__, None),
                "cpu": cpu_name(), "megatron_core": package_version("megatron-core"),
                "backend": "nccl" if device == "cuda" else "gloo", "deep_ep": package_version("deep_ep")},
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "part_out"},
                   "model": {"hidden": model.hidden_size, "experts": model.moe.num_experts, "top_k": model.moe.top_k,
                             "moe_ffn": model.moe.ffn_hidden_size, "shared_experts": model.moe.num_shared_experts,
                             "groups": model.moe.num_groups, "group_topk": model.moe.group_topk}},
        "definitions": DEFINITIONS, "points": points, "skipped": skipped,
        "projection": {"hardware": vars(H800), "tokens_per_gpu": 4096, "mfu": 0.4, "table": projection_table()},
    }


DEFINITIONS = {
    "tokens_per_dp_rank": "tokens one data-parallel rank (DP = world / TP) processes per step; with TP > 1 each TP "
                          "rank holds 1/TP of them (sequence parallel). weak: --tokens-per-rank; strong: "
                          "--global-tokens / DP",
    "forward_tokens_per_s": "global tokens / the slowest rank's median forward seconds (backward likewise)",
    "phase_s": "median seconds per dispatcher method over the repeats, summed over layers, slowest rank",
    "bytes": "per rank, summed over layers: payload sent to / received from other ranks in the collectives called "
             "in each phase (metadata: dispatch_preprocess; dispatch: token_dispatch + dispatch_postprocess; "
             "combine: combine_preprocess + token_combine; backward: all collectives in loss.backward())",
    "formula_bytes": "the same from moe_comm_model.py and the step's routing counts (TP = ETP = 1)",
    "imbalance": "per layer, (token, expert) pairs per expert summed over all ranks",
    "predicted_comm_s": "largest per-rank forward dispatch + combine bytes / the harness's all_to_all bandwidth",
    "measured_comm_s": "token_dispatch + token_combine seconds (forward), slowest rank",
}


def finish(args, points: list[dict], skipped: list[dict], device: str) -> Path:
    out = args.out or RESULTS_DIR / f"moe_ep_scaling_{'gpu' if device == 'cuda' else 'cpu'}.json"
    data = payload(args, points, skipped, device)
    write_payload(data, out)
    if not args.no_plot:
        from moe_plots import write_plots

        for path in write_plots(data, out.with_suffix("")):
            print(f"wrote {path}")
    return out


def worker(args) -> None:
    from r1_megatron.runtime import init_distributed

    init_distributed()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    points, skipped = sweep(args, device)
    if dist.get_rank() == 0:
        if args.part_out:
            args.part_out.write_text(json.dumps({"points": points, "skipped": skipped}))
        else:
            finish(args, points, skipped, device)
    dist.barrier()
    dist.destroy_process_group()


def driver(args, argv: list[str]) -> None:
    """Launch torchrun per world size (each in its own process group, killed on any exit), merge, plot."""
    points, skipped = [], []
    forwarded = _without_option(argv, "--world-sizes")
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.world_sizes:
            part = Path(tmp) / f"world{world}.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
                   __file__, *forwarded, "--part-out", str(part)]
            # its own session so that killpg ends torchrun and its ranks; the death signal ends torchrun if this
            # driver is SIGKILLed (the ranks die with torchrun: r1_megatron.child_processes)
            proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=functools.partial(
                child_processes.die_with_parent, os.getpid()))
            try:
                rc = proc.wait(timeout=args.timeout)
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            if rc != 0:
                raise SystemExit(f"torchrun at world size {world} failed with code {rc}")
            part_data = json.loads(part.read_text())
            points += part_data["points"]
            skipped += part_data["skipped"]
    finish(args, points, skipped, "cuda" if torch.cuda.is_available() else "cpu")


def _without_option(argv: list[str], name: str) -> list[str]:
    out, skipping = [], False
    for item in argv:
        if item == name:
            skipping = True
            continue
        if skipping and not item.startswith("--"):
            continue
        skipping = False
        out.append(item)
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if "RANK" in os.environ:
        worker(args)
    elif args.world_sizes:
        driver(args, argv)
    else:
        raise SystemExit("run under torchrun, or give --world-sizes to launch it (e.g. --world-sizes 1 2 4)")


if __name__ == "__main__":
    main()
