"""The body of one reward worker process (see ``runner.py``). Importing this module pays the start-up cost
(math-verify, sympy) that the forkserver then shares with every worker it forks."""
from __future__ import annotations

import importlib
import os
import resource
import signal
import time
import traceback
from multiprocessing.connection import Connection

from .math_reward import load_math_verify, math_accuracy
from .registry import APPLIES_FIELD, get_reward
from .runner import OUT_OF_MEMORY_EXIT
from .sandbox import kill_sandbox_processes, remove_sandbox_dirs

load_math_verify()

# Results wait in a worker at most this long (then one sample): what a kill mid-chunk makes the runner score
# again. Short next to a round trip's worth of math samples per message, long next to a sandboxed program.
FLUSH_S = 0.05


def _warm_up() -> None:
    """sympy builds caches lazily; do it once here so the first real sample is not the slow one."""
    math_accuracy("\\boxed{\\frac{1}{2}}", "0.5")


def score_sample(completion, sample, names, reward_kwargs) -> tuple[dict[str, float], str | None]:
    """Every named reward of one sample; a reward that raises scores 0.0 and the first error is returned as
    "<reward>: <ExceptionType>: <message>" (one line, so a run can quote it) and the traceback after it.

    A MemoryError (the worker's address-space limit) ends the worker: exiting is the sure way to give the
    memory back, and the runner reports the sample as a crash and scores the rest of the chunk elsewhere."""
    scores, error = {}, None
    applies = sample.get(APPLIES_FIELD)  # rewards.kinds: the rewards of the sample's kind; others are not run
    for name in names:
        if applies is not None and name not in applies:
            scores[name] = 0.0
            continue
        try:
            scores[name] = float(get_reward(name)(completion, sample, **reward_kwargs.get(name, {})))
        except MemoryError:
            os._exit(OUT_OF_MEMORY_EXIT)
        except Exception as e:
            scores[name] = 0.0
            summary = " ".join(f"{name}: {type(e).__name__}: {e}".split())[:500]
            error = error or f"{summary}\n{traceback.format_exc(limit=3)[-2000:]}"
    return scores, error


def limit_memory(memory_bytes: int) -> None:
    """RLIMIT_AS (address space) of this process. Only the soft limit: the code sandbox sets its own limits,
    soft and hard, on the programs it starts, which it could not do above a hard limit inherited from here.
    Where setrlimit refuses the value, the worker runs without a limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        memory_bytes = min(memory_bytes, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, hard))
    except (ValueError, OSError):
        pass


def worker_main(conn: Connection, started_C, cpu_C, names: tuple[str, ...], reward_kwargs: dict,
                plugin_modules: tuple[str, ...], predecessor_pid: int | None, memory_bytes: int):
    """Score chunks ``[(task_id, completion, sample), ...]`` until EOF/None (see ``score_chunk``), within
    ``memory_bytes`` of address space (start-up included).

    A replacement worker first kills what its killed predecessor left running in the code sandbox, so
    that cost is paid here and not in the trainer's scoring loop.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the trainer, which closes the pool
    limit_memory(memory_bytes)
    if predecessor_pid is not None:
        kill_sandbox_processes(predecessor_pid)
        remove_sandbox_dirs(predecessor_pid)
    for module in plugin_modules:
        importlib.import_module(module)
    for name in names:
        get_reward(name)
    _warm_up()
    conn.send(("ready",))
    while True:
        try:
            chunk = conn.recv()
        except EOFError:
            return
        if chunk is None or not score_chunk(conn, started_C, cpu_C, chunk, names, reward_kwargs):
            return


def score_chunk(conn: Connection, started_C, cpu_C, chunk, names, reward_kwargs) -> bool:
    """Score ``chunk`` in order, answering lists of ``(task_id, scores, error)``: when the chunk ends and
    after any sample that ends FLUSH_S or more after the last answer. ``cpu_C[j]`` then ``started_C[j]`` get
    this process's CPU seconds and the time when sample j starts (the runner's per-sample limits). False:
    stop, the runner has closed (it writes to a busy worker only to stop it) or is gone (EOF reads as ready
    too)."""
    results, answered_at = [], time.monotonic()
    for j, (task_id, completion, sample) in enumerate(chunk):
        if conn.poll():
            return False
        cpu_C[j] = sum(os.times()[:4])  # user, system, children's user and system: what /proc/<pid>/stat sums
        started_C[j] = time.monotonic()
        results.append((task_id, *score_sample(completion, sample, names, reward_kwargs)))
        if j == len(chunk) - 1 or time.monotonic() - answered_at >= FLUSH_S:
            conn.send(results)
            results, answered_at = [], time.monotonic()
    return True
