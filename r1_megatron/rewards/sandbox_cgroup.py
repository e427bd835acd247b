"""One cgroup per sandboxed run: its memory (RAM + swap + tmpfs pages, all processes together) and its process
count, bounded by the kernel.

cgroup v2 is used when this process's cgroup delegates the ``memory`` and ``pids`` controllers to its children
(``cgroup.subtree_control``); otherwise cgroup v1's ``memory`` and ``pids`` hierarchies when they are mounted
and writable (Docker/Kubernetes hosts on cgroup v1, and this project's CI machine). Neither: ``create`` returns
None and the sandbox falls back to per-process rlimits (RLIMIT_AS, RLIMIT_NPROC), which the ``sandbox.py``
docstring describes.

A run's cgroups are named ``r1-sandbox-<pid>-<n>`` under this process's own cgroup, so a replacement reward
worker can remove what a killed one left (``remove_stale``).
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import re
import signal
import time

_PREFIX = "r1-sandbox-"
_COUNTER = itertools.count()
# Read from these files; tests point them at a fake tree.
MOUNTINFO, SELF_CGROUP = "/proc/self/mountinfo", "/proc/self/cgroup"


@dataclasses.dataclass(frozen=True)
class _Hierarchy:
    version: int
    controller: str  # "memory", "pids", or "" for the v2 unified tree (both)
    base: str  # this process's cgroup directory in that hierarchy


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, fstype, super options) of every cgroup mount."""
    found = []
    with open(MOUNTINFO) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if tail and tail[0] in ("cgroup", "cgroup2"):
                found.append((_unescape(fields[3]), _unescape(fields[4]), tail[0], set(tail[-1].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """{controller or "" (v2): this process's cgroup path} from /proc/self/cgroup."""
    paths = {}
    with open(SELF_CGROUP) as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name] = path
    return paths


def _base(mount_root: str, mount_point: str, path: str) -> str | None:
    if not (path + "/").startswith(mount_root.rstrip("/") + "/"):
        return None  # our cgroup is outside what this mount shows
    return os.path.normpath(os.path.join(mount_point, os.path.relpath(path, mount_root)))


def _v2() -> list[_Hierarchy]:
    paths = _own_paths()
    for root, point, fstype, _ in _mounts():
        if fstype == "cgroup2" and "" in paths:
            base = _base(root, point, paths[""])
            try:
                with open(os.path.join(base, "cgroup.subtree_control")) as f:
                    delegated = set(f.read().split())
            except (OSError, TypeError):
                continue
            if {"memory", "pids"} <= delegated and os.access(base, os.W_OK):
                return [_Hierarchy(2, "", base)]
    return []


def _v1() -> list[_Hierarchy]:
    paths, found = _own_paths(), {}
    for root, point, fstype, options in _mounts():
        for controller in ("memory", "pids"):
            if fstype == "cgroup" and controller in options and controller in paths and controller not in found:
                base = _base(root, point, paths[controller])
                if base and os.access(base, os.W_OK):
                    found[controller] = _Hierarchy(1, controller, base)
    return list(found.values()) if "memory" in found else []


def hierarchies() -> list[_Hierarchy]:
    """Where per-run cgroups can be made: one v2 directory, or v1 memory (and pids when writable); [] if none."""
    try:
        return _v2() or _v1()
    except OSError:
        return []


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


class SandboxCgroup:
    """The cgroup(s) of one run. ``procs_files``: where the run's first process writes its pid to join."""

    def __init__(self, dirs: list[tuple[_Hierarchy, str]]):
        self.dirs = dirs
        self.procs_files = [os.path.join(d, "cgroup.procs") for _, d in dirs]
        self.controllers = tuple(sorted({"memory", "pids"} if dirs[0][0].version == 2 else
                                        {h.controller for h, _ in dirs}))

    @classmethod
    def create(cls, memory_bytes: int, max_processes: int, pid: int | None = None) -> "SandboxCgroup | None":
        """A fresh cgroup with these limits, or None when this machine offers none (see the module docstring)."""
        name = f"{_PREFIX}{os.getpid() if pid is None else pid}-{next(_COUNTER)}"
        made = []
        try:
            for hierarchy in hierarchies():
                path = os.path.join(hierarchy.base, name)
                os.mkdir(path)
                made.append((hierarchy, path))
                _limit(hierarchy, path, memory_bytes, max_processes)
        except OSError:
            if made:
                SandboxCgroup(made).remove()
            return None
        return cls(made) if made else None

    def memory_exceeded(self) -> bool:
        """Whether the kernel's OOM killer acted in this cgroup (or an allocation hit the limit)."""
        for hierarchy, path in self.dirs:
            if hierarchy.version == 2:
                return _counter(_read(os.path.join(path, "memory.events")), "oom_kill") > 0
            if hierarchy.controller == "memory":
                text = _read(os.path.join(path, "memory.oom_control"))
                if "oom_kill " in text:
                    return _counter(text, "oom_kill") > 0
                return int(_read(os.path.join(path, "memory.failcnt")) or 0) > 0
        return False

    def kill_all(self) -> None:
        """SIGKILL whatever is still in the cgroup (the PID namespace usually took everything already)."""
        for hierarchy, path in self.dirs:
            if hierarchy.version == 2 and os.path.exists(os.path.join(path, "cgroup.kill")):
                _write(os.path.join(path, "cgroup.kill"), "1")
                continue
            for _ in range(100):
                pids = _read(os.path.join(path, "cgroup.procs")).split()
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.005)

    def remove(self) -> None:
        """rmdir the cgroup(s); a cgroup empties a moment after its last process is reaped, so retry briefly."""
        for _, path in self.dirs:
            for attempt in range(200):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.005)


def _counter(text: str, key: str) -> int:
    match = re.search(rf"^{key} (\d+)$", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _limit(hierarchy: _Hierarchy, path: str, memory_bytes: int, max_processes: int) -> None:
    if hierarchy.version == 2:
        _write(os.path.join(path, "memory.max"), str(memory_bytes))
        if os.path.exists(os.path.join(path, "memory.swap.max")):
            _write(os.path.join(path, "memory.swap.max"), "0")
        _write(os.path.join(path, "pids.max"), str(max_processes))
    elif hierarchy.controller == "memory":
        _write(os.path.join(path, "memory.limit_in_bytes"), str(memory_bytes))
        if os.path.exists(os.path.join(path, "memory.memsw.limit_in_bytes")):  # RAM + swap: no escape into swap
            _write(os.path.join(path, "memory.memsw.limit_in_bytes"), str(memory_bytes))
    else:
        _write(os.path.join(path, "pids.max"), str(max_processes))


def remove_stale(pid: int) -> None:
    """Kill and remove the cgroups that runs of process ``pid`` (killed mid-run) left behind."""
    for hierarchy in hierarchies():
        try:
            names = [n for n in os.listdir(hierarchy.base) if n.startswith(f"{_PREFIX}{pid}-")]
        except OSError:
            continue
        for name in names:
            stale = SandboxCgroup([(hierarchy, os.path.join(hierarchy.base, name))])
            stale.kill_all()
            stale.remove()
