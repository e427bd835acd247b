"""Run a scenario of tests/parallel/worker.py under torchrun (gloo) and collect each rank's JSON results.

Each launch costs ~8 s of process start-up on 2 cores, so scenarios check many layouts per launch.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class ProcessGroup:
    """A child process in its own session; leaving the `with` block kills its whole process group (torchrun's
    ranks, a run meant to be killed), so a failing test never leaves workers running."""

    def __init__(self, cmd: list[str], env: dict, capture: bool = True):
        """capture=False discards the output: a child nobody reads from must not block on a full pipe."""
        stream = subprocess.PIPE if capture else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, env=env, stdout=stream, stderr=stream, text=True, start_new_session=True)

    def __enter__(self):
        return self.proc

    def __exit__(self, *exc):
        # the whole group even when the child itself has ended: a test that SIGKILLs the child leaves its own
        # children (reward workers, multiprocessing's resource tracker) behind in the group otherwise
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # every member of the group has already exited
            pass
        self.proc.wait()


def worker_env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1"), "OMP_NUM_THREADS": "1"}


def run_to_end(cmd: list[str], timeout: int = 600) -> tuple[str, str]:
    """(stdout, stderr) of `cmd` run to completion (its process group is killed on timeout); fail with its output
    if it fails."""
    with ProcessGroup(cmd, worker_env()) as proc:
        out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:5])}... failed with code {proc.returncode}:\n"
                             f"{out[-6000:]}\n{err[-12000:]}")
    return out, err


def torchrun(scenario: str, workdir: Path, nproc: int, timeout: int = 600, extra: tuple[str, ...] = ()) -> list[dict]:
    """Results of every rank (a list indexed by rank); fails with the ranks' output when the launch fails."""
    run_to_end([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                str(ROOT / "tests" / "parallel" / "worker.py"), scenario, str(workdir), *extra], timeout)
    return [json.loads((workdir / f"{scenario}-rank{r}.json").read_text()) for r in range(nproc)]
