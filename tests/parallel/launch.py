"""Run a scenario of tests/parallel/worker.py under torchrun (gloo) and collect each rank's JSON results.

Each launch costs ~8 s of process start-up on 2 cores, so scenarios check many layouts per launch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def torchrun(scenario: str, workdir: Path, nproc: int, timeout: int = 600, extra: tuple[str, ...] = ()) -> list[dict]:
    """Results of every rank (a list indexed by rank); fails with the ranks' output when the launch fails."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(ROOT / "tests" / "parallel" / "worker.py"), scenario, str(workdir), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun {scenario} (nproc={nproc}) failed with code {proc.returncode}:\n"
                             f"{proc.stdout[-6000:]}\n{proc.stderr[-12000:]}")
    return [json.loads((workdir / f"{scenario}-rank{r}.json").read_text()) for r in range(nproc)]
