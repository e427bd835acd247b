"""Run an untrusted Python program in a separate, contained process.

Layers, from strongest to weakest, and what each one guarantees (``SandboxResult.layers`` says which were
active for a run):

- ``uid`` (when the caller is root): the program runs as a fresh unprivileged uid/gid derived from the
  caller's pid (no supplementary groups). It cannot signal, ptrace or write to anything of other users, and
  RLIMIT_NPROC counts only its own processes, so the process-count limit is exact. After every run all
  processes of that uid are killed, which also catches children that left the process group (setsid).
- ``netns``: a new, empty network namespace (loopback down, no interfaces): no network at all, at the
  kernel level. As root it is made directly; otherwise inside a new user namespace when the kernel allows it.
- ``pidns``: the program is pid 1 of a new PID namespace. It cannot see or signal any process outside it,
  and when it exits or is killed the kernel kills and reaps every process it started (also those that
  called setsid()), so no orphans or zombies are left behind to count against RLIMIT_NPROC.
- ``readonly_fs``: a private mount namespace in which every mount is read-only except the run's fresh
  temporary directory, so /tmp, /dev/shm and the home directory cannot be written either (as root directly,
  otherwise inside the new user namespace).
- ``rlimits`` (always): RLIMIT_CPU (CPU seconds), RLIMIT_AS (address space), RLIMIT_FSIZE (largest file
  written, also caps stdout, which goes to a file), RLIMIT_NOFILE, RLIMIT_NPROC, RLIMIT_CORE=0. Without the
  ``uid`` layer RLIMIT_NPROC counts all processes of the caller's user, so it is set to the current count
  plus ``max_processes``: it still stops a fork bomb, but the margin is shared with the caller's own forks.
- ``audit_hook`` (only when ``uid`` or ``netns`` is missing): a Python audit hook refusing socket creation
  (without ``netns``), ctypes, and signals to other processes. Without ``uid`` the program has the caller's
  uid, so this hook is all that stops it from signalling the caller; native code (a C extension, or a
  child process running another binary) bypasses it: a speed bump, not a boundary. Without ``uid`` a
  grandchild that calls setsid() outlives the run until its RLIMIT_CPU expires, unless ``pidns`` is active.

Always, whatever the layers: a fresh temporary directory as cwd, HOME and TMPDIR; a scrubbed environment
(``python -I``, a fixed PATH); its own session and process group, killed as a whole (SIGKILL) at the wall
deadline; PR_SET_PDEATHSIG so the program dies with the calling process; stdout captured to a file of
which at most ``max_output_bytes`` are read back, so 100 MB of printing costs no memory.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

_BOOTSTRAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_bootstrap.py")
_UID_BASE = 1_500_000_000  # far above any real account; valid wherever the uid map is the full range
_PATH = "/usr/local/bin:/usr/bin:/bin"
_RUN_LOCK = threading.Lock()  # one run per process at a time: runs share the pid-derived uid


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """Per-run limits and options. ``cpu_s`` defaults to the wall limit rounded up."""

    wall_s: float = 5.0
    cpu_s: int | None = None
    memory_bytes: int = 1 << 30
    max_processes: int = 16
    max_file_bytes: int = 8 << 20
    max_output_bytes: int = 1 << 20
    max_open_files: int = 64
    namespaces: bool = True  # False skips netns/readonly_fs (to exercise the fallback layers)
    drop_privileges: bool = True  # False skips the uid layer even as root (same reason)
    # Interpreter for the program; None picks this process's interpreter when the sandbox uid can run it (a
    # pyenv under /root usually cannot), else the first python3 on the fixed PATH that it can run.
    python: str | None = None

    def __post_init__(self):
        for name in ("wall_s", "memory_bytes", "max_processes", "max_file_bytes", "max_output_bytes",
                     "max_open_files"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.cpu_s is not None and self.cpu_s < 1:
            raise ValueError(f"SandboxConfig.cpu_s must be >= 1 (RLIMIT_CPU has 1 s resolution), got {self.cpu_s!r}")


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    exit_code: int | None  # negative: killed by that signal; None: never finished (wall deadline)
    timed_out: bool
    stdout: bytes
    stderr_head: bytes  # the first 8 KB of stderr, for debugging
    output_truncated: bool
    layers: tuple[str, ...]
    passed_marker: bool  # assert mode: the harness reached the end of the tests
    wall_s: float


def sandbox_uid(pid: int | None = None) -> int | None:
    """The uid sandboxed runs of process ``pid`` use, or None when that process cannot drop privileges."""
    if os.geteuid() != 0:
        return None
    return _UID_BASE + (os.getpid() if pid is None else pid)


def kill_sandbox_processes(pid: int | None = None) -> None:
    """SIGKILL every process running as ``sandbox_uid(pid)`` (kill(-1) from a helper holding that uid).

    The reward runner has this done after killing a worker, so that the worker's sandboxed programs die too.
    """
    uid = sandbox_uid(pid)
    if uid is None:
        return
    helper = "import os, signal\ntry:\n os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError:\n pass"
    proc = subprocess.Popen([_usable_python(None), "-I", "-S", "-c", helper], user=uid, group=uid,
                            extra_groups=[], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={"PATH": _PATH})
    proc.wait(timeout=30)


@functools.lru_cache(maxsize=None)
def _usable_python(explicit: str | None) -> str:
    """The first candidate interpreter a fresh unprivileged uid can start and import the stdlib with (probed
    once per process; every sandbox uid is equally unprivileged)."""
    uid = sandbox_uid()
    if explicit is not None:
        return explicit
    if uid is None:
        return sys.executable
    candidates = [sys.executable] + [os.path.join(d, "python3") for d in _PATH.split(":")]
    for exe in candidates:
        if os.path.exists(exe) and _can_run(exe, uid):
            return exe
    raise RuntimeError(f"sandbox: no Python interpreter among {candidates} can be run by the unprivileged "
                       "sandbox uid; set SandboxConfig.python or make one world-readable")


def _can_run(exe: str, uid: int) -> bool:
    try:
        probe = subprocess.run([exe, "-I", "-c", "import json, runpy, resource, ctypes, heapq"], user=uid,
                               group=uid, extra_groups=[], cwd="/", env={"PATH": _PATH}, timeout=60,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def _count_user_tasks(uid: int) -> int:
    """Processes plus threads of ``uid`` (what RLIMIT_NPROC counts)."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                st = os.stat(f"/proc/{entry}/task")
                if st.st_uid == uid:
                    count += st.st_nlink - 2
            except OSError:
                pass
    return count


def _rlimits(config: SandboxConfig, uid: int | None) -> dict[str, tuple[int, int]]:
    cpu = config.cpu_s if config.cpu_s is not None else max(1, math.ceil(config.wall_s))
    nproc = config.max_processes if uid is not None else _count_user_tasks(os.getuid()) + config.max_processes
    return {
        "RLIMIT_CPU": (cpu, cpu + 1),
        "RLIMIT_AS": (config.memory_bytes, config.memory_bytes),
        "RLIMIT_FSIZE": (config.max_file_bytes, config.max_file_bytes),
        "RLIMIT_NOFILE": (config.max_open_files, config.max_open_files),
        "RLIMIT_NPROC": (nproc, nproc),
        "RLIMIT_CORE": (0, 0),
    }


def _dir_prefix(pid: int) -> str:
    return f"r1_sandbox_{pid}_"


def remove_sandbox_dirs(pid: int) -> None:
    """Delete the temporary directories that runs of process ``pid`` left behind (it was killed mid-run)."""
    for name in os.listdir(tempfile.gettempdir()):
        if name.startswith(_dir_prefix(pid)):
            shutil.rmtree(os.path.join(tempfile.gettempdir(), name), ignore_errors=True)


def _prepare_dirs(uid: int | None) -> tuple[str, str]:
    root = tempfile.mkdtemp(prefix=_dir_prefix(os.getpid()))
    os.chmod(root, 0o711)  # the program may traverse to work/, not list or open the capture files
    work = os.path.join(root, "work")
    os.mkdir(work, 0o700)
    if uid is not None:
        os.chown(work, uid, uid)
    return root, work


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(text)
    os.chmod(path, 0o644)


def run_python(source: str, *, stdin: bytes = b"", tests: str | None = None,
               config: SandboxConfig = SandboxConfig()) -> SandboxResult:
    """Run ``source`` as a program in the sandbox.

    stdio mode (``tests is None``): ``stdin`` is fed to the program run as ``__main__``. Assert mode: the
    program is executed as a module, then ``tests`` (Python statements, e.g. asserts) run in its namespace,
    and ``passed_marker`` is True only when every statement ran (a secret written to a private fd after the
    tests, so an early ``os._exit(0)`` does not pass; code that reads its own interpreter memory could forge it).
    """
    with _RUN_LOCK:
        uid = sandbox_uid() if config.drop_privileges else None
        root, work = _prepare_dirs(uid)
        try:
            return _run_in(root, work, uid, source, stdin, tests, config)
        finally:
            if uid is not None:
                kill_sandbox_processes()
            shutil.rmtree(root, ignore_errors=True)


def _run_in(root, work, uid, source, stdin, tests, config) -> SandboxResult:
    _write(os.path.join(work, "solution.py"), source)
    nonce = os.urandom(16).hex().encode() + b"\n"
    if tests is not None:
        _write(os.path.join(work, "tests.py"), tests)
        stdin = nonce
    cfg = {"work": work, "uid": uid, "gid": uid, "rlimits": _rlimits(config, uid), "namespaces": config.namespaces,
           "mode": "stdio" if tests is None else "assert", "parent_pid": os.getpid(), "python": config.python}
    with tempfile.TemporaryFile(dir=root) as fin, tempfile.TemporaryFile(dir=root) as fout, \
            tempfile.TemporaryFile(dir=root) as ferr, tempfile.TemporaryFile(dir=root) as fres:
        fin.write(stdin)
        fin.seek(0)
        cfg["result_fd"] = fres.fileno()
        start = time.monotonic()
        exit_code, timed_out = _spawn_and_wait(cfg, (fin, fout, ferr), fres, work, config.wall_s)
        wall = time.monotonic() - start
        fout.seek(0)
        out = fout.read(config.max_output_bytes + 1)
        ferr.seek(0)
        stderr_head = ferr.read(8192)
        fres.seek(0)
        lines = fres.read(4096).split(b"\n")
    layers = _parse_layers(lines[0])
    return SandboxResult(exit_code=exit_code, timed_out=timed_out, stdout=out[: config.max_output_bytes],
                         stderr_head=stderr_head, output_truncated=len(out) > config.max_output_bytes, layers=layers,
                         passed_marker=tests is not None and len(lines) > 1 and lines[1] + b"\n" == nonce,
                         wall_s=wall)


def _parse_layers(line: bytes) -> tuple[str, ...]:
    try:
        return tuple(json.loads(line))
    except ValueError:
        return ()


def _spawn_and_wait(cfg, stdio, fres, work, wall_s) -> tuple[int | None, bool]:
    env = {"PATH": _PATH, "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    explicit = cfg.pop("python")
    python = _usable_python(explicit) if cfg["uid"] is not None else explicit or sys.executable
    proc = subprocess.Popen([python, "-I", "-B", _BOOTSTRAP, json.dumps(cfg)], stdin=stdio[0], stdout=stdio[1],
                            stderr=stdio[2], cwd=work, env=env, start_new_session=True,
                            pass_fds=(fres.fileno(),))
    try:
        return proc.wait(timeout=wall_s), False
    except subprocess.TimeoutExpired:
        return None, True
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def available_layers() -> tuple[str, ...]:
    """The layers a default run gets on this machine (runs a trivial program once)."""
    return run_python("pass", config=SandboxConfig(wall_s=30)).layers
