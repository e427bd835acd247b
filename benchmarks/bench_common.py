"""Shared machinery of the kernel benchmarks: timing, peak memory, the copy-bandwidth floor, table and JSON.

A benchmark describes cases (inputs + bytes of one pass over the big tensor) and providers (name → callable
returning the loss/output); `run_benchmark` times every provider in every mode (fwd, bwd, fwd+bwd), measures
peak extra memory on CUDA, and reports each time as a percentage of the bandwidth floor:
    floor = passes(mode) × bytes_per_pass / copy_bandwidth,   copy_bandwidth measured here, on the same device.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODES = ("fwd", "bwd", "fwd+bwd")


@dataclasses.dataclass
class Case:
    """One input shape: `make()` builds fresh inputs; `bytes_per_pass` is one read of the big tensor."""

    label: dict
    make: Callable[[], dict]
    bytes_per_pass: int
    passes: dict  # mode → how many passes over the big tensor the ideal kernel makes


def common_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--providers", default=None, help="comma-separated subset of providers to run")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (median reported)")
    parser.add_argument("--tiny", action="store_true", help="smallest shapes, one repetition (CI smoke run)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    return parser


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(setup: Callable[[], object], fn: Callable[[object], object], device: str, repeats: int,
            warmup: int) -> float:
    """Median wall time of fn(setup()) in milliseconds; setup runs outside the timed region."""
    times = []
    for i in range(warmup + repeats):
        state = setup()
        synchronize(device)
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(state)
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            fn(state)
            elapsed = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            times.append(elapsed)
    return statistics.median(times)


def peak_extra_bytes(setup: Callable[[], object], fn: Callable[[object], object], device: str) -> int | None:
    """Peak memory allocated by fn(setup()) beyond what was live before it (CUDA only; None on CPU)."""
    if device != "cuda":
        return None
    state = setup()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn(state)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def copy_bandwidth(device: str, nbytes: int, repeats: int = 10) -> float:
    """Achievable memory bandwidth in bytes/s: a device-to-device copy moves 2·nbytes (one read, one write)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: None, lambda _: dst.copy_(src), device, repeats, warmup=2)
    return 2 * src.numel() * 4 / (ms / 1e3)


def package_version(pkg: str) -> str | None:
    """The installed version of `pkg`, None when it is not installed."""
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: str) -> dict:
    return {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "triton": package_version("triton"),
        "liger_kernel": package_version("liger-kernel"), "python": platform.python_version(),
    }


def _mode_calls(provider: Callable[[dict], torch.Tensor], case: Case, grad_of: str | None):
    """(setup, fn) per mode. Backward uses autograd.grad so no AccumulateGrad copy skews in-place kernels."""
    def forward(inputs):
        return provider(inputs)

    def backward(state):
        inputs, out = state
        torch.autograd.grad(out, inputs[grad_of])

    def both(inputs):
        backward((inputs, provider(inputs)))

    calls = {"fwd": (case.make, forward)}
    if grad_of is not None:
        calls["bwd"] = (lambda: (lambda inputs: (inputs, provider(inputs)))(case.make()), backward)
        calls["fwd+bwd"] = (case.make, both)
    return calls


def run_benchmark(name: str, cases: list[Case], providers: dict[str, Callable], skipped: dict[str, str],
                  args: argparse.Namespace, grad_of: str | None, repeats: int) -> dict:
    """Time every provider × case × mode; print a table; write and return the JSON payload."""
    bandwidth = copy_bandwidth(args.device, min(max(c.bytes_per_pass for c in cases), 1 << 30))
    rows = []
    for case in cases:
        for pname, provider in providers.items():
            for mode, (setup, fn) in _mode_calls(provider, case, grad_of).items():
                try:
                    ms = time_ms(setup, fn, args.device, repeats, warmup=0 if args.tiny else 2)
                    peak = peak_extra_bytes(setup, fn, args.device)
                except Exception as exc:  # a provider that cannot run this case is reported, not fatal
                    skipped[f"{pname} {case.label} {mode}"] = f"{type(exc).__name__}: {exc}"[:300]
                    continue
                floor_ms = case.passes[mode] * case.bytes_per_pass / bandwidth * 1e3
                rows.append({**case.label, "provider": pname, "mode": mode, "ms": ms,
                             "peak_extra_MiB": None if peak is None else peak / 2**20,
                             "floor_ms": floor_ms, "pct_of_floor": 100 * floor_ms / ms})
    payload = {"benchmark": name, "env": environment(args.device), "copy_bandwidth_GBps": bandwidth / 1e9,
               "results": rows, "skipped": skipped}
    print_table(payload)
    write_payload(payload, args.out or RESULTS_DIR / f"{name}-{slug(payload['env']['device'])}.json")
    return payload


def write_payload(payload: dict, out: Path) -> Path:
    """Write a benchmark's JSON to `out` (its folder made if needed) and say where; returns `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "device"


def print_table(payload: dict) -> None:
    env = payload["env"]
    print(f"{payload['benchmark']} on {env['device']} (torch {env['torch']}, triton {env['triton']}); "
          f"copy bandwidth {payload['copy_bandwidth_GBps']:.1f} GB/s")
    rows = payload["results"]
    if rows:
        shape_keys = [k for k in rows[0] if k not in ("provider", "mode", "ms", "peak_extra_MiB", "floor_ms",
                                                      "pct_of_floor")]
        header = shape_keys + ["provider", "mode", "ms", "peak_extra_MiB", "%floor"]
        print(" | ".join(f"{h:>12}" for h in header))
        for r in rows:
            peak = "n/a" if r["peak_extra_MiB"] is None else f"{r['peak_extra_MiB']:.1f}"
            cells = [r[k] for k in shape_keys] + [r["provider"], r["mode"], f"{r['ms']:.3f}", peak,
                                                  f"{r['pct_of_floor']:.1f}"]
            print(" | ".join(f"{str(c):>12}" for c in cells))
    for what, why in payload["skipped"].items():
        print(f"skipped {what}: {why}")


def select_providers(available: dict[str, Callable], args: argparse.Namespace, skipped: dict[str, str]) -> dict:
    """Filter by --providers; providers that were unavailable stay listed in `skipped` with their reason."""
    wanted = None if args.providers is None else set(args.providers.split(","))
    unknown = (wanted or set()) - set(available) - set(skipped)
    if unknown:
        raise SystemExit(f"--providers: unknown {sorted(unknown)}; known: {sorted(set(available) | set(skipped))}")
    return {n: p for n, p in available.items() if wanted is None or n in wanted}


def compiled(fn: Callable, skipped: dict[str, str]) -> Callable | None:
    """torch.compile(fn), or None (with the reason in `skipped`) where compilation is unavailable."""
    try:
        return torch.compile(fn, dynamic=False)
    except Exception as exc:  # e.g. no C++ compiler for the CPU backend
        skipped["compile"] = f"{type(exc).__name__}: {exc}"[:300]
        return None


def triton_runs_on(device: str, skipped: dict[str, str]) -> bool:
    """The Triton provider needs CUDA or TRITON_INTERPRET=1; otherwise say so instead of timing the fallback."""
    from r1_megatron.kernels import Backend, select_backend

    if select_backend(torch.zeros(1, device=device)) is Backend.TRITON:
        return True
    skipped["triton"] = "needs CUDA or TRITON_INTERPRET=1 (the dispatcher would run the PyTorch reference)"
    return False


def standard_providers(reference_fn: Callable, triton_fn: Callable, wrap: Callable, device: str,
                       skipped: dict[str, str]) -> dict:
    """The providers every kernel benchmark has: the eager reference, torch.compile of it and our Triton kernel,
    each wrapped by `wrap` into a function of the case's inputs."""
    found = {"eager": wrap(reference_fn)}
    eager_compiled = compiled(reference_fn, skipped)
    if eager_compiled is not None:
        found["compile"] = wrap(eager_compiled)
    if triton_runs_on(device, skipped):
        found["triton"] = wrap(triton_fn)
    return found


def set_threads(threads: int) -> None:
    """Intra- and inter-op threads of this process (inter-op can be set once only; a second call keeps it)."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set
        pass


def command_line(script: str, argv: list[str] | None) -> str:
    """How this benchmark was run, for its JSON: `python <script relative to the cwd> <arguments>`."""
    path = Path(script).resolve()
    try:
        path = path.relative_to(Path.cwd())
    except ValueError:
        pass
    return " ".join(["python", str(path), *(sys.argv[1:] if argv is None else argv)])


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), for a benchmark's JSON; the platform's name elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
