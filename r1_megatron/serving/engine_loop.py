"""The one thread that owns the engine: HTTP handlers hand it requests and aborts through a queue, it steps the
engine and hands each request's outputs back to the handler's callback.

    loop = EngineLoop(engine, max_queue=256)
    threading.Thread(target=loop.run).start()
    rid = loop.submit(prompt_ids, SamplingParams(...), sink)   # sink(RequestOutput | Exception), engine thread
    loop.abort(rid)                                            # or abort(rid, index=j): one sample
    loop.close(grace_s)                  # refuse new requests, finish the rest for grace_s, abort what is left

Under torchrun every rank runs `run()`: rank 0's loop broadcasts each step's commands (new requests, aborts,
stop) to the others over a gloo group (`RankLink`), so that every rank adds the same requests and steps
identically, as the engine's request API needs; an idle rank 0 sends an empty batch about once a second.
"""
from __future__ import annotations

import dataclasses
import datetime
import itertools
import queue
import threading
import time
from typing import Callable

from r1_megatron.rollout import SamplingParams

Sink = Callable[[object], None]  # called on the engine thread with each RequestOutput, or an Exception


class Overloaded(Exception):
    """The server holds --max-queue requests already."""


class ShuttingDown(Exception):
    """The server is draining after SIGTERM and takes no new requests."""


@dataclasses.dataclass(frozen=True)
class Add:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams


@dataclasses.dataclass(frozen=True)
class Abort:
    request_id: str
    index: int | None = None


@dataclasses.dataclass(frozen=True)
class Stop:
    """Every request has finished or been aborted: leave the loop."""


@dataclasses.dataclass
class ServerCounters:
    """Requests over the server's life: accepted, finished (any reason), refused as overloaded or while
    shutting down, aborted (disconnects, stop strings, shutdown), and live now."""

    accepted: int = 0
    finished: int = 0
    rejected: int = 0
    aborts: int = 0
    live: int = 0


class RankLink:
    """Rank 0's commands, the same on every rank: a gloo group over the world with a day-long timeout (an idle
    server's ranks wait in the broadcast between rank 0's heartbeats; a dead rank 0 ends the job through
    torchrun, not through this timeout)."""

    def __init__(self):
        import torch.distributed as dist

        self._dist = dist
        self.rank = dist.get_rank()
        self.group = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=1))

    def share(self, commands: list | None) -> list:
        """Rank 0's `commands` on every rank (collective)."""
        box = [commands]
        self._dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]


class EngineLoop:
    def __init__(self, engine, *, max_queue: int = 256, link: RankLink | None = None, heartbeat_s: float = 1.0):
        if not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"EngineLoop: max_queue must be an int >= 1, got {max_queue!r}")
        self.engine, self.max_queue, self.link, self.heartbeat_s = engine, max_queue, link, heartbeat_s
        self.counters = ServerCounters()
        self.error: BaseException | None = None  # what ended the loop, if anything but a shutdown did
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[str, Sink] = {}  # engine thread only
        self._lock = threading.Lock()  # counters and the closing state, shared with the handlers
        self._ids = itertools.count()
        self._deadline: float | None = None  # set by close(): when the rest is aborted
        self._stopping = False

    @property
    def leader(self) -> bool:
        return self.link is None or self.link.rank == 0

    @property
    def closing(self) -> bool:
        return self._deadline is not None

    def submit(self, prompt_ids: list[int], params: SamplingParams, sink: Sink) -> str:
        """Queue a request; its id. Overloaded when --max-queue requests are live, ShuttingDown after close()."""
        with self._lock:
            if self.closing or self.error is not None:
                self.counters.rejected += 1
                raise ShuttingDown("the server is shutting down")
            if self.counters.live >= self.max_queue:
                self.counters.rejected += 1
                raise Overloaded(f"the server holds {self.max_queue} requests (--max-queue); retry later")
            self.counters.live += 1
            self.counters.accepted += 1
            request_id = f"req-{next(self._ids)}"
        self._commands.put((Add(request_id, list(prompt_ids), params), sink))
        return request_id

    def abort(self, request_id: str, index: int | None = None) -> None:
        """Finish the request (or its sample `index`) with ABORT at the next step; a finished one is ignored."""
        self._commands.put((Abort(request_id, index), None))

    def close(self, grace_s: float) -> None:
        """Refuse new requests; let the running ones finish for up to grace_s seconds, then abort the rest and
        leave run(). Safe from a signal handler (it only sets the deadline)."""
        with self._lock:
            if self._deadline is None:
                self._deadline = time.monotonic() + grace_s

    def stats(self) -> dict:
        """The engine's counters since start (steps, tokens, peak_running, ...) and the server's."""
        return {**dataclasses.asdict(self.engine.stats), **dataclasses.asdict(self.counters)}

    # ------------------------------------------------------------------------------- the engine thread

    def run(self) -> None:
        """Step the engine until close() has drained it (every rank, in lockstep under torchrun)."""
        try:
            with self.engine.generating():
                while not self._iterate():
                    pass
        except BaseException as exc:
            self.error = exc
            for sink in self._sinks.values():
                sink(exc)
            self._sinks.clear()
            raise

    def _iterate(self) -> bool:
        """One step: this step's commands (broadcast from rank 0), then an engine step if there is work.
        True once a Stop has been applied and the engine is empty."""
        pending = self._take_commands() if self.leader else []  # [(command, its handler's sink)]
        commands = [command for command, _ in pending]
        if self.link is not None:
            commands = self.link.share(commands if self.leader else None)
        sinks = [sink for _, sink in pending] or [None] * len(commands)
        for command, sink in zip(commands, sinks):
            self._apply(command, sink)
        if self.engine.has_unfinished_requests:
            for out in self.engine.step():
                self._deliver(out)
        return self._stopping and not self.engine.has_unfinished_requests

    def _take_commands(self) -> list:
        """What the handlers queued; waits up to a heartbeat for something when the engine is idle. Past the
        shutdown deadline (or once nothing is live while closing), aborts for the rest and a Stop."""
        pending = []
        idle = not self.engine.has_unfinished_requests
        try:
            pending.append(self._commands.get(timeout=self.heartbeat_s) if idle else self._commands.get_nowait())
            while True:
                pending.append(self._commands.get_nowait())
        except queue.Empty:
            pass
        with self._lock:
            due = self._deadline is not None and (self.counters.live == 0 or time.monotonic() >= self._deadline)
        if due and not self._stopping:
            live = set(self._sinks) | {c.request_id for c, _ in pending if isinstance(c, Add)}
            pending += [(Abort(rid), None) for rid in sorted(live)] + [(Stop(), None)]
        return pending

    def _apply(self, command, sink: Sink | None) -> None:
        if isinstance(command, Add):
            try:
                self.engine.add_request(command.prompt_ids, command.params, request_id=command.request_id)
            except ValueError as exc:  # every rank refuses it alike
                self._finish(command.request_id)
                if sink is not None:
                    sink(exc)
                return
            if sink is not None:
                self._sinks[command.request_id] = sink
        elif isinstance(command, Abort):
            by_index = {} if command.index is None else {"index": command.index}
            if self.engine.abort(command.request_id, **by_index):
                with self._lock:
                    self.counters.aborts += 1
        else:
            self._stopping = True

    def _deliver(self, out) -> None:
        sink = self._sinks.get(out.request_id)
        if out.finished:
            self._sinks.pop(out.request_id, None)
            self._finish(out.request_id)
        if sink is not None:
            sink(out)

    def _finish(self, request_id: str) -> None:
        if self.leader:
            with self._lock:
                self.counters.live -= 1
                self.counters.finished += 1
