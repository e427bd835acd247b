"""Score a batch of completions in a pool of worker processes with a hard per-sample timeout.

A worker that runs past the timeout or dies is SIGKILLed (with its sandboxed programs) and replaced; its
sample scores 0.0 on every reward and is counted. Workers are forked from a forkserver that has imported
the reward code once (math-verify and sympy take seconds to import), so a replacement starts in
milliseconds and no worker is forked from the trainer's multi-threaded process.

Samples go to a worker in chunks (one message, not one round trip per sample, which left the worker idle
while this process woke up). The worker stamps the start of each sample of its chunk in shared memory, so the
deadline is still per sample and a kill blames the one sample that was running; it sends results when the
chunk ends and at least every ``reward_worker.FLUSH_S``, so a kill mid-chunk loses at most that much work:
the killed chunk's unreported samples, other than the blamed one, go back to the queue and are scored again.

The per-sample limit ``timeout_s`` is CPU time of the scoring work (the worker's user + system time and that of
its reaped children, such as the code sandbox's programs, from /proc/<pid>/stat), so a correct answer scores
the same on a quiet and on a loaded machine. A sample that waits rather than computes is stopped by the wall
backstop ``wall_timeout_s``; one that reaches it within its CPU budget may have been starved, not stuck, and is
scored once more on another worker (counted in ``reward/retries``), then it is a timeout. Without /proc
(macOS) the CPU time cannot be read from outside and ``timeout_s`` is wall time.
"""
from __future__ import annotations

import collections
import ctypes
import dataclasses
import importlib
import math
import multiprocessing
import os
import time
from multiprocessing.connection import wait
from typing import Any, Mapping, Sequence

from ..child_processes import exit_with_creator
from .registry import get_reward
from .sandbox import kill_sandbox_processes, remove_sandbox_dirs

_WORKER_MODULE = "r1_megatron.rewards.reward_worker"
CHUNK_CHARS = 1 << 20  # completion text per message; a chunk holds at least one sample, however long
WALL_TIMEOUT_FACTOR = 3.0  # default wall backstop, in units of timeout_s
OUT_OF_MEMORY_EXIT = 86  # a worker's exit status after a MemoryError (reward_worker.py)
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")  # resolution of /proc's CPU times; also the shortest CPU re-check


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Weighted sum of named rewards (see ``registry.py``), computed by ``num_workers`` processes.

    Default = R1: math accuracy and format, equal weight. ``timeout_s`` is the hard per-sample limit, in CPU
    seconds of the scoring work; ``wall_timeout_s`` (None: ``WALL_TIMEOUT_FACTOR`` × ``timeout_s``) the wall
    backstop for a sample that waits (see the module docstring). ``startup_timeout_s`` bounds worker start-up
    (imports), which is not charged to any sample. ``worker_memory_bytes``: each worker's address-space limit
    (RLIMIT_AS; a reward that passes it is a crash). ``spare_workers`` idle, started workers wait to replace a
    killed one at once. ``chunk_size``: at most this many samples (and about ``CHUNK_CHARS`` of completion text,
    which bounds a message's memory) go to a worker in one message.
    """

    weights: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"math_accuracy": 1.0, "format": 1.0})
    reward_kwargs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    num_workers: int = 2
    spare_workers: int = 1
    timeout_s: float = 10.0
    wall_timeout_s: float | None = None
    startup_timeout_s: float = 120.0
    # A worker's own address space is ~65 MB (Python, sympy, math-verify); 4 GiB leaves room for big sympy
    # work and for plugins that import numpy or a CPU torch (~0.7 GB), and stops a runaway long before the node.
    worker_memory_bytes: int = 4 << 30
    chunk_size: int = 16
    plugin_modules: tuple[str, ...] = ()
    start_method: str = "forkserver"

    def __post_init__(self):
        if not self.weights:
            raise ValueError("RewardConfig.weights must name at least one reward")
        for module in self.plugin_modules:
            importlib.import_module(module)  # so plugin names validate below
        for name, weight in self.weights.items():
            get_reward(name)
            if not math.isfinite(weight):
                raise ValueError(f"RewardConfig.weights[{name!r}] must be finite, got {weight!r}")
        for name in self.reward_kwargs:
            if name not in self.weights:
                raise ValueError(f"RewardConfig.reward_kwargs names {name!r}, which is not in weights")
        if self.num_workers < 1:
            raise ValueError(f"RewardConfig.num_workers must be >= 1, got {self.num_workers!r}")
        if self.chunk_size < 1:
            raise ValueError(f"RewardConfig.chunk_size must be >= 1, got {self.chunk_size!r}")
        if self.spare_workers < 0:
            raise ValueError(f"RewardConfig.spare_workers must be >= 0, got {self.spare_workers!r}")
        # inf would switch a limit off: these are the guarantees that a step ends
        limits = {"timeout_s": self.timeout_s, "startup_timeout_s": self.startup_timeout_s}
        if self.wall_timeout_s is not None:
            limits["wall_timeout_s"] = self.wall_timeout_s
        for name, value in limits.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"RewardConfig.{name} must be a finite number of seconds > 0, got {value!r}")
        if self.wall_limit_s < self.timeout_s:
            raise ValueError(f"RewardConfig.wall_timeout_s must be >= timeout_s={self.timeout_s!r} (a sample on "
                             f"one thread uses at most a CPU second per second), got {self.wall_timeout_s!r}")
        if not (isinstance(self.worker_memory_bytes, int) and self.worker_memory_bytes > 0):
            raise ValueError(f"RewardConfig.worker_memory_bytes must be a whole number of bytes > 0, "
                             f"got {self.worker_memory_bytes!r}")
        if self.start_method not in ("forkserver", "spawn"):
            raise ValueError(f"RewardConfig.start_method must be 'forkserver' or 'spawn' (never fork from a "
                             f"threaded trainer), got {self.start_method!r}")

    @property
    def wall_limit_s(self) -> float:
        """The wall backstop per sample: ``wall_timeout_s``, or ``WALL_TIMEOUT_FACTOR`` × ``timeout_s``."""
        return self.wall_timeout_s if self.wall_timeout_s is not None else WALL_TIMEOUT_FACTOR * self.timeout_s

    @classmethod
    def r1(cls, language_consistency_weight: float = 0.0, target_language: str = "en", **kwargs) -> "RewardConfig":
        """R1: accuracy + format (equal weight), plus language consistency when its weight is non-zero."""
        weights = {"math_accuracy": 1.0, "format": 1.0}
        reward_kwargs = {}
        if language_consistency_weight:
            weights["language_consistency"] = language_consistency_weight
            reward_kwargs["language_consistency"] = {"target_language": target_language}
        return cls(weights=weights, reward_kwargs=reward_kwargs, **kwargs)


@dataclasses.dataclass
class RewardBatch:
    """Scores of one batch. ``failure[i]`` is None, "timeout", "crash" (worker died) or "error" (a reward
    raised; that reward scored 0.0, the others count). ``errors[i]`` says what happened to a failed sample:
    "<reward names>: <one-line summary>", then for an error the worker's traceback on further lines.
    ``retries``: samples scored a second time after reaching the wall backstop within their CPU budget."""

    total: list[float]
    per_reward: dict[str, list[float]]
    failure: list[str | None]
    wall_s: float
    errors: list[str | None] = dataclasses.field(default_factory=list)
    retries: int = 0
    # rewards.kinds: reward -> which samples it scored (a reward absent here scored every sample)
    applies: dict[str, list[bool]] = dataclasses.field(default_factory=dict)
    counts: dict[str, float] = dataclasses.field(default_factory=dict)  # e.g. a judge's unparsed verdicts

    def applied(self, name: str) -> list[bool]:
        """Which samples reward ``name`` scored (its other values are 0.0 and count in no mean)."""
        return self.applies.get(name) or [True] * len(self.total)

    def metrics(self) -> dict[str, float]:
        counts = collections.Counter(self.failure)
        out = {}
        for name, values in self.per_reward.items():
            scored = [v for v, applied in zip(values, self.applied(name)) if applied]
            out[f"reward/{name}_mean"] = sum(scored) / max(len(scored), 1)
        out.update({f"reward/{name}": float(value) for name, value in self.counts.items()})
        out["reward/total_mean"] = sum(self.total) / max(len(self.total), 1)
        out.update({"reward/timeouts": float(counts["timeout"]), "reward/crashes": float(counts["crash"]),
                    "reward/errors": float(counts["error"]), "reward/retries": float(self.retries)})
        out["reward/wall_s"] = self.wall_s
        return out


def _worker_entry(*args) -> None:
    """Process target; imports the worker module there, not in the trainer (it is in the forkserver already).
    The worker exits with the trainer, even in a hung sample (the trainer's deadline is gone with it)."""
    from .reward_worker import worker_main

    exit_with_creator()
    worker_main(*args)


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds of process ``pid``: user + system time of all its threads plus those of its reaped children
    (utime + stime + cutime + cstime of /proc/<pid>/stat, the sum ``os.times()`` gives inside it); None without
    /proc or once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    return sum(int(field) for field in fields[11:15]) * _TICK_S  # fields 14-17, counted from the state (3)


def next_chunk(pending: collections.deque, completions: Sequence[str], workers: int, chunk_size: int) -> list[int]:
    """Pop the next chunk of sample indices off ``pending``.

    length = clamp(ceil(len(pending) / (2 * workers)), 1, chunk_size), cut where the completions pass
    CHUNK_CHARS (after at least one): a share of what is left, so the last chunks shrink and every worker
    finishes at about the same time instead of one finishing a full chunk alone.
    """
    length = max(1, min(chunk_size, -(-len(pending) // (2 * workers))))
    chunk = [pending.popleft()]
    chars = len(completions[chunk[0]])
    while pending and len(chunk) < length and chars + len(completions[pending[0]]) <= CHUNK_CHARS:
        chars += len(completions[pending[0]])
        chunk.append(pending.popleft())
    return chunk


class _Worker:
    def __init__(self, ctx, config: RewardConfig, predecessor_pid: int | None = None):
        self.conn, child_conn = ctx.Pipe(duplex=True)
        # started_C[j]: time.monotonic() (one clock for all processes) when the worker began sample j of its
        # chunk, 0.0 before; cpu_C[j]: the worker's CPU seconds then (os.times(), process_cpu_s's sum), written
        # first. The worker writes them, this process reads them for the deadlines and the culprit.
        self.started_C = ctx.RawArray(ctypes.c_double, config.chunk_size)
        self.cpu_C = ctx.RawArray(ctypes.c_double, config.chunk_size)
        args = (child_conn, self.started_C, self.cpu_C, tuple(config.weights), dict(config.reward_kwargs),
                config.plugin_modules, predecessor_pid, config.worker_memory_bytes)
        self.process = ctx.Process(target=_worker_entry, args=args, daemon=True, name="r1-reward-worker")
        self.process.start()
        child_conn.close()
        self.ready = False
        self.started = time.monotonic()
        self.chunk: list[int] = []  # sample indices sent, in the order the worker scores them
        self.reported = 0  # how many of them have results here
        self.progress_at = math.inf  # when the chunk was sent or its last results came
        self.progress_cpu = 0.0  # the worker's CPU seconds then (as read here)

    @property
    def busy(self) -> bool:
        return self.reported < len(self.chunk)

    def cpu_s(self) -> float | None:
        return process_cpu_s(self.process.pid)

    def mark_progress(self) -> None:
        self.progress_at, self.progress_cpu = time.monotonic(), self.cpu_s() or 0.0

    def send_chunk(self, chunk: list[int], completions, samples) -> None:
        """Raises OSError/ValueError when the worker is gone; it was idle, so it had written all its stamps."""
        self.started_C[:len(chunk)] = [0.0] * len(chunk)
        self.conn.send([(task, completions[task], samples[task]) for task in chunk])
        self.chunk, self.reported = chunk, 0
        self.mark_progress()

    def current(self) -> tuple[int, float, float]:
        """(position in the chunk of the sample being scored, when it began and the worker's CPU seconds then,
        as far as this process can tell).

        That is the last stamped sample; when its result is already here, the worker is between samples and
        the next one is charged from the moment the result came."""
        last = self.reported - 1
        while last + 1 < len(self.chunk) and self.started_C[last + 1] > 0.0:
            last += 1
        if last < self.reported:
            return self.reported, self.progress_at, self.progress_cpu
        return last, max(self.progress_at, self.started_C[last]), max(self.progress_cpu, self.cpu_C[last])

    def charged(self, now: float) -> tuple[int, float, float]:
        """(position of the running sample, the CPU seconds and the wall seconds it has used). Without /proc the
        CPU time is taken to be the wall time."""
        running, began, began_cpu = self.current()
        wall_s, cpu_now = now - began, self.cpu_s()
        return running, wall_s if cpu_now is None else cpu_now - began_cpu, wall_s

    def kill(self) -> None:
        """SIGKILL the worker; the process that replaces it kills the sandboxed programs it left."""
        self.process.kill()
        self.conn.close()


class _Scoring:
    """One ``score`` call: the samples not sent yet and what is known of each."""

    def __init__(self, completions, samples, names):
        n = len(completions)
        self.completions, self.samples = completions, samples
        self.pending = collections.deque(range(n))
        self.per_reward = {name: [0.0] * n for name in names}
        self.failure: list[str | None] = [None] * n
        self.errors: list[str | None] = [None] * n
        self.retried: set[int] = set()  # samples sent again after reaching the wall backstop
        self.left = n

    def record(self, task: int, scores: dict | None, kind: str | None, text: str | None) -> None:
        """None scores: timed out or crashed, every reward stays 0.0."""
        self.left -= 1
        self.failure[task], self.errors[task] = kind, text
        if scores is not None:
            for name, values in self.per_reward.items():
                values[task] = scores[name]


class RewardRunner:
    """``score(completions, samples)`` -> RewardBatch. Use as a context manager, or call ``close()``."""

    def __init__(self, config: RewardConfig):
        self.config = config
        self._ctx = multiprocessing.get_context(config.start_method)
        if config.start_method == "forkserver":
            # Only takes effect if this process has not started its forkserver yet.
            self._ctx.set_forkserver_preload([_WORKER_MODULE, *config.plugin_modules])
        self._workers = [_Worker(self._ctx, config) for _ in range(config.num_workers)]
        self._spares = [_Worker(self._ctx, config) for _ in range(config.spare_workers)]
        self._killed: list = []  # killed processes not yet reaped
        self.replacements = 0
        self._await_ready()

    def __enter__(self) -> "RewardRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """A busy worker sees the stop message between two samples and leaves its chunk; one that does not
        leave within a second (a hung sample) is killed."""
        everyone = self._workers + self._spares
        for worker in everyone:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        for worker in everyone:
            worker.process.join(timeout=1.0)
            if worker.process.is_alive():
                worker.kill()
                worker.process.join()
                kill_sandbox_processes(worker.process.pid)
                remove_sandbox_dirs(worker.process.pid)
        for process in self._killed:
            process.join()
        self._workers, self._spares, self._killed = [], [], []

    def _await_ready(self) -> None:
        while not all(w.ready for w in self._workers + self._spares):
            self._poll(time.monotonic() + 0.5, scoring=None)

    def score(self, completions: Sequence[str], samples: Sequence[Mapping[str, Any]]) -> RewardBatch:
        """Scores of each (completion, sample) pair. Returns once every sample has a result, a timeout, or a
        crash; no sample holds a worker longer than ``wall_timeout_s`` past the moment the worker took it, or
        twice that with its one retry."""
        if len(completions) != len(samples):
            raise ValueError(f"score: {len(completions)} completions but {len(samples)} samples")
        if not self._workers:
            raise RuntimeError("RewardRunner is closed")
        start = time.monotonic()
        names = list(self.config.weights)
        scoring = _Scoring(completions, samples, names)
        while scoring.left:
            self._dispatch(scoring)
            self._poll(self._next_deadline(), scoring)
        per_reward = scoring.per_reward
        total = [sum(self.config.weights[k] * per_reward[k][i] for k in names) for i in range(len(completions))]
        return RewardBatch(total=total, per_reward=per_reward, failure=scoring.failure,
                           wall_s=time.monotonic() - start, errors=scoring.errors, retries=len(scoring.retried))

    def _dispatch(self, scoring: _Scoring) -> None:
        for worker in self._workers:
            if not scoring.pending or not worker.ready or worker.busy:
                continue
            chunk = next_chunk(scoring.pending, scoring.completions, len(self._workers), self.config.chunk_size)
            try:
                worker.send_chunk(chunk, scoring.completions, scoring.samples)
            except (OSError, ValueError):
                self._replace(worker)  # died while idle: nothing was charged to these samples
                scoring.pending.extendleft(reversed(chunk))

    def _next_deadline(self) -> float:
        """The next moment a busy worker may pass a limit. A worker's CPU time grows no faster than the wall
        clock while one thread scores, so its CPU limit is not reached before ``now`` + the CPU time left (a
        multi-threaded reward may pass it by up to that much)."""
        now, soonest = time.monotonic(), math.inf
        for worker in self._workers:
            if worker.busy:
                _, cpu_s, wall_s = worker.charged(now)
                cpu_left = max(self.config.timeout_s - cpu_s, _TICK_S)
                soonest = min(soonest, now + min(cpu_left, self.config.wall_limit_s - wall_s))
        return soonest if soonest < math.inf else now + 0.5

    def _poll(self, until: float, scoring: _Scoring | None) -> None:
        """Wait for messages or deaths until ``until``; then enforce the limits."""
        everyone = self._workers + self._spares
        handles = {w.conn: w for w in everyone}
        handles.update({w.process.sentinel: w for w in everyone})
        for handle in wait(list(handles), timeout=max(0.0, until - time.monotonic())):
            worker = handles[handle]
            if worker in self._workers or worker in self._spares:
                self._receive(worker, scoring)
        self._killed = [p for p in self._killed if p.is_alive()]  # is_alive() reaps the dead
        now = time.monotonic()
        for worker in self._workers + self._spares:
            if worker.busy:
                self._enforce(worker, now, scoring)  # blamed as seen now, before any kill
            elif not worker.ready and now - worker.started > self.config.startup_timeout_s:
                raise RuntimeError(f"reward worker did not start within {self.config.startup_timeout_s} s")

    def _enforce(self, worker: _Worker, now: float, scoring: _Scoring) -> None:
        """Past its CPU budget: a timeout. At the wall backstop within it: sent once more (a starved sample
        finishes then), a timeout the second time."""
        running, cpu_s, wall_s = worker.charged(now)
        if cpu_s >= self.config.timeout_s:
            self._fail(worker, "timeout", scoring, running)
        elif wall_s >= self.config.wall_limit_s:
            again = worker.chunk[running] not in scoring.retried
            self._fail(worker, "retry" if again else "wall timeout", scoring, running)

    def _receive(self, worker: _Worker, scoring: _Scoring | None) -> None:
        try:
            if not worker.conn.poll():
                raise EOFError  # woken by the process sentinel: it exited
            message = worker.conn.recv()
        except (EOFError, OSError):  # every result it sent before has been read
            self._fail(worker, "crash", scoring, worker.current()[0] if worker.busy else None)
            return
        if message == ("ready",):
            worker.ready = True
            return
        for task, scores, error in message:  # the next results of its chunk, in order
            scoring.record(task, scores, "error" if error else None, error)
        worker.reported += len(message)
        worker.mark_progress()

    def _fail(self, worker: _Worker, kind: str, scoring: _Scoring | None, running: int | None) -> None:
        """Replace the worker. Busy (``running``: the position in its chunk of the sample it was on): that
        sample fails with ``kind`` ("timeout", "wall timeout" or "crash"; "retry": it goes to the back of the
        queue instead); the chunk's other samples without results here go back to the queue's front."""
        if running is None:
            self._replace(worker)
            if scoring is None or not worker.ready:
                raise RuntimeError(f"reward worker exited during start-up (exit code {worker.process.exitcode})")
            return
        text = None if kind == "retry" else self._failure_text(worker, kind)
        self._replace(worker)
        culprit = worker.chunk[running]
        scoring.pending.extendleft(reversed([t for t in worker.chunk[worker.reported:] if t != culprit]))
        if text is None:
            scoring.retried.add(culprit)
            scoring.pending.append(culprit)
        else:
            scoring.record(culprit, None, "crash" if kind == "crash" else "timeout", text)

    def _failure_text(self, worker: _Worker, kind: str) -> str:
        names = ", ".join(self.config.weights)
        if kind == "timeout":
            clock = "CPU" if process_cpu_s(os.getpid()) is not None else "wall"  # no /proc: wall time (macOS)
            return f"{names}: timed out: used {self.config.timeout_s:g} s of {clock} time (the worker was killed)"
        if kind == "wall timeout":
            return (f"{names}: timed out: ran {self.config.wall_limit_s:g} s of wall time without using "
                    f"{self.config.timeout_s:g} s of CPU time, twice (the worker was killed)")
        worker.process.join(timeout=0.1)  # it has exited or closed its pipe: its exit code is there, or soon
        code = worker.process.exitcode
        if code == OUT_OF_MEMORY_EXIT:
            return (f"{names}: the reward worker ran out of memory "
                    f"(worker_memory_bytes={self.config.worker_memory_bytes})")
        return f"{names}: the reward worker died" + (f" (exit code {code})" if code is not None else "")

    def _replace(self, worker: _Worker) -> None:
        """Swap in a ready spare when there is one (a fresh process takes its place among the spares)."""
        worker.kill()
        self._killed.append(worker.process)
        fresh = _Worker(self._ctx, self.config, predecessor_pid=worker.process.pid)
        pool = self._spares if worker in self._spares else self._workers
        index = pool.index(worker)
        spare = next((w for w in self._spares if w.ready), None) if pool is self._workers else None
        if spare is None:
            pool[index] = fresh
        else:
            pool[index] = spare
            self._spares[self._spares.index(spare)] = fresh
        self.replacements += 1
