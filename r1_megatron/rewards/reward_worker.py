"""The body of one reward worker process (see ``runner.py``). Importing this module pays the start-up cost
(math-verify, sympy) that the forkserver then shares with every worker it forks."""
from __future__ import annotations

import importlib
import signal
import traceback
from multiprocessing.connection import Connection

from .math_reward import load_math_verify, math_accuracy
from .registry import get_reward
from .sandbox import kill_sandbox_processes, remove_sandbox_dirs

load_math_verify()


def _warm_up() -> None:
    """sympy builds caches lazily; do it once here so the first real sample is not the slow one."""
    math_accuracy("\\boxed{\\frac{1}{2}}", "0.5")


def score_sample(completion, sample, names, reward_kwargs) -> tuple[dict[str, float], str | None]:
    """Every named reward of one sample; a reward that raises scores 0.0 and the first error is returned as
    "<reward>: <ExceptionType>: <message>" (one line, so a run can quote it) and the traceback after it."""
    scores, error = {}, None
    for name in names:
        try:
            scores[name] = float(get_reward(name)(completion, sample, **reward_kwargs.get(name, {})))
        except Exception as e:
            scores[name] = 0.0
            summary = " ".join(f"{name}: {type(e).__name__}: {e}".split())[:500]
            error = error or f"{summary}\n{traceback.format_exc(limit=3)[-2000:]}"
    return scores, error


def worker_main(conn: Connection, names: tuple[str, ...], reward_kwargs: dict, plugin_modules: tuple[str, ...],
                predecessor_pid: int | None):
    """Answer ``(task_id, completion, sample)`` requests with ``(task_id, scores, error)`` until EOF/None.

    A replacement worker first kills what its killed predecessor left running in the code sandbox, so
    that cost is paid here and not in the trainer's scoring loop.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the trainer, which closes the pool
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
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        task_id, completion, sample = message
        conn.send((task_id, *score_sample(completion, sample, names, reward_kwargs)))
