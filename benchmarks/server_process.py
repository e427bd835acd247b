"""A server under test as a subprocess in its own process group, started and always stopped by its owner
(bench_serve.py): the whole group is signalled, so nothing the server spawned outlives the benchmark."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class Server:
    """A server subprocess in its own process group (start_new_session): `with Server(...) as srv:` waits until
    GET /v1/models answers (srv.model: the first model id) and always kills the whole group on the way out."""

    def __init__(self, cmd: list[str], env: dict, cwd: Path, log: Path, port: int, ready_timeout: float,
                 grace_s: float = 5.0):
        self.cmd, self.env, self.cwd, self.log, self.port = cmd, env, cwd, log, port
        self.ready_timeout, self.grace_s = ready_timeout, grace_s
        self.base_url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.model: str | None = None
        self.startup_s: float | None = None
        self.stopped_by: str | None = None  # "exited" (before stop()), "SIGTERM" or "SIGKILL"

    def __enter__(self) -> "Server":
        start = time.perf_counter()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self.model = self._wait_ready(start)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - start
        return self

    def _wait_ready(self, start: float) -> str:
        while time.perf_counter() - start < self.ready_timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode} before answering: {self.log_tail()}")
            try:
                return get_json(f"{self.base_url}/v1/models", timeout=2.0)["data"][0]["id"]
            except (OSError, ValueError, KeyError, IndexError):
                time.sleep(0.25)
        raise RuntimeError(f"server not ready after {self.ready_timeout} s: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-1500:]

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL to it after `grace_s`; returns when the group is gone (or 10 s
        after SIGKILL) and the leader is reaped."""
        if self.proc is None:
            return
        self.stopped_by = "exited"
        for sig, wait in ((signal.SIGTERM, self.grace_s), (signal.SIGKILL, 10.0)):
            if not self._group_alive():
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            self.stopped_by = sig.name
            deadline = time.monotonic() + wait
            while self._group_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.proc.wait(10.0)

    def _group_alive(self) -> bool:
        """Some process of the group is left (the leader reaped first: a zombie would still count)."""
        self.proc.poll()
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def __exit__(self, *exc) -> None:
        self.stop()
