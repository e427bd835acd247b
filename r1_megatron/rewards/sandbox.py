"""Run an untrusted Python program in a separate, contained process.

Layers, from strongest to weakest, and what each one guarantees (``SandboxResult.layers`` says which were
active for a run):

- ``uid`` (when the caller is root): the program runs as a fresh unprivileged uid/gid derived from the
  caller's pid (no supplementary groups). It cannot signal, ptrace or write to anything of other users, and
  RLIMIT_NPROC counts only its own processes, so the process-count limit is exact. After every run all
  processes of that uid are killed, which also catches children that left the process group (setsid).
- ``netns``: a new, empty network namespace (loopback down, no interfaces): no network at all, at the
  kernel level, and no abstract unix sockets of the host (they belong to a network namespace). As root it is
  made directly; otherwise inside a new user namespace when the kernel allows it.
- ``pidns``: the program is pid 1 of a new PID namespace. It cannot see or signal any process outside it,
  and when it exits or is killed the kernel kills and reaps every process it started (also those that
  called setsid()), so no orphans or zombies are left behind to count against RLIMIT_NPROC.
- ``mount_view``: the program's own root filesystem (``pivot_root`` into a fresh tmpfs, the host's root
  detached): read-only binds of the OS's executables and libraries (/usr, /lib*, /bin, /sbin, the dynamic
  loader's cache) and of the interpreter's own prefixes (a virtualenv, a conda or pyenv install; see
  ``SandboxConfig.python``), /dev/null, zero, full, random and urandom, and a scratch /tmp. Nothing else
  exists: no project source, datasets, home directories, /run or /var (so no filesystem unix sockets of the
  host), no /sys. ``own_proc``: /proc is a fresh procfs of the PID namespace, listing only the run's
  processes. ``disk_quota``: the scratch /tmp (cwd, HOME and TMPDIR) is a tmpfs of
  ``SandboxConfig.max_disk_bytes``: a program that fills it gets ENOSPC and affects no other run.
- ``readonly_fs`` (when the view cannot be built, e.g. an architecture without a known pivot_root syscall
  number): a private mount namespace in which every mount is read-only except the run's fresh temporary
  directory. The host's files stay readable.
- ``cgroup_memory``, ``cgroup_pids``: a cgroup per run (v2, else v1; ``sandbox_cgroup.py``) bounds the memory
  of all its processes together (RAM, swap and its tmpfs pages) to ``memory_bytes`` and its task count to
  ``max_processes`` (+2 for the supervisor and pid 1). The kernel's OOM killer ends a run over its memory
  (``SandboxResult.memory_exceeded``). Without a writable cgroup hierarchy the per-process rlimits below are
  the fallback: each process's address space is bounded, not their sum.
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

Verdicts are never the program's to give: stdio runs are judged by comparing their stdout here, and probe runs
(``run_python(probes=...)``) report the values of expressions as plain data that the caller compares with
expected values that never enter the sandbox (``code_reward.py``).
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
from typing import Any, Sequence

from .sandbox_cgroup import SandboxCgroup, remove_stale

_BOOTSTRAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_bootstrap.py")
_UID_BASE = 1_500_000_000  # far above any real account; valid wherever the uid map is the full range
_PATH = "/usr/local/bin:/usr/bin:/bin"
_RUN_LOCK = threading.Lock()  # one run per process at a time: runs share the pid-derived uid
# What every program needs from the OS inside its view: executables, shared libraries, the loader's cache.
_SYSTEM_BINDS = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin", "/etc/ld.so.cache")
# The interpreter's prefixes and version, and where it would import this project from: a non-editable install
# puts it (and its benchmark files, answers included) inside a bound prefix, where the view hides it.
_INTERPRETER_PROBE = ("import importlib.util, json, os, sys; spec = importlib.util.find_spec('r1_megatron'); "
                      "print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, "
                      "os.path.dirname(os.path.realpath(sys.executable)), "
                      "spec and spec.origin and os.path.dirname(spec.origin), sys.version]))")


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """Per-run limits and options. ``cpu_s`` defaults to the wall limit rounded up.

    ``memory_bytes`` bounds the run's processes together where a cgroup is available (each one's address space
    otherwise); ``max_disk_bytes`` its scratch /tmp; ``max_processes`` its tasks.
    """

    wall_s: float = 5.0
    cpu_s: int | None = None
    memory_bytes: int = 1 << 30
    max_processes: int = 16
    max_file_bytes: int = 8 << 20
    max_output_bytes: int = 1 << 20
    max_open_files: int = 64
    max_disk_bytes: int = 64 << 20
    max_inodes: int = 4096
    namespaces: bool = True  # False skips netns/pidns/the view (to exercise the fallback layers)
    drop_privileges: bool = True  # False skips the uid layer even as root (same reason)
    cgroups: bool = True  # False skips the per-run cgroup (same reason)
    # Interpreter for the program; None picks this process's interpreter when the sandbox uid can run it (a
    # pyenv under /root usually cannot), else the first python3 on the fixed PATH that it can run. Its prefixes
    # (a virtualenv and the installation it was made from) are bound read-only into the program's view, so the
    # packages installed there (numpy, ...) import; ``interpreter_info`` says which Python a run uses.
    python: str | None = None

    def __post_init__(self):
        for name in ("wall_s", "memory_bytes", "max_processes", "max_file_bytes", "max_output_bytes",
                     "max_open_files", "max_disk_bytes", "max_inodes"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"SandboxConfig.{name} must be a finite number > 0, got {value!r}")
        if self.cpu_s is not None and not (1 <= self.cpu_s < math.inf):
            raise ValueError(f"SandboxConfig.cpu_s must be >= 1 (RLIMIT_CPU has 1 s resolution), got {self.cpu_s!r}")
        if self.python is not None and not os.path.isabs(self.python):
            raise ValueError(f"SandboxConfig.python must be an absolute path, got {self.python!r}")


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    exit_code: int | None  # negative: killed by that signal; None: never finished (wall deadline)
    timed_out: bool
    stdout: bytes
    stderr_head: bytes  # the first 8 KB of stderr, for debugging
    output_truncated: bool
    layers: tuple[str, ...]
    wall_s: float
    memory_exceeded: bool = False  # the run's cgroup hit its memory limit (the OOM killer acted)
    probes: dict[int, Any] = dataclasses.field(default_factory=dict)  # probe mode: step index -> decoded value


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
        if uid is not None and not _can_run(explicit, uid):
            raise RuntimeError(f"sandbox: SandboxConfig.python={explicit} cannot be run by the unprivileged sandbox "
                               "uid (is it and its installation world-readable?)")
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


def _run_python_of(config: SandboxConfig, uid: int | None) -> str:
    return _usable_python(config.python) if uid is not None else config.python or sys.executable


@functools.lru_cache(maxsize=None)
def _interpreter(exe: str) -> tuple[tuple[str, ...], str | None, str]:
    """(the interpreter's prefixes, this project's package directory as it would import it (or None), its
    version), asked of the interpreter itself once per process."""
    out = subprocess.run([exe, "-I", "-c", _INTERPRETER_PROBE], capture_output=True, text=True, timeout=60,
                         env={"PATH": _PATH}, check=True, cwd="/").stdout
    *prefixes, package, version = json.loads(out)
    return tuple(os.path.realpath(p) for p in prefixes), package and os.path.realpath(package), version.split()[0]


def interpreter_info(config: SandboxConfig = SandboxConfig()) -> dict[str, Any]:
    """Which Python runs sandboxed programs on this machine: its path, version and the prefixes bound."""
    uid = sandbox_uid() if config.drop_privileges else None
    exe = _run_python_of(config, uid)
    prefixes, _, version = _interpreter(exe)
    return {"python": exe, "version": version, "prefixes": list(prefixes)}


def _covered(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _hidden(exe: str, binds: Sequence[str]) -> list[str]:
    """Paths inside the binds that the view covers with an empty directory: this project's package (source and
    the benchmark files it ships, with their answers), when the interpreter has it installed."""
    package = _interpreter(exe)[1]
    return [package] if package and _covered(package, binds) else []


def _binds(exe: str) -> list[str]:
    """Host paths bound into the view: the system's, then the interpreter's prefixes not already inside one."""
    chosen: list[str] = []
    for path in [*_SYSTEM_BINDS, *_interpreter(exe)[0]]:
        if os.path.lexists(path) and not _covered(path, chosen):
            chosen.append(path)
    return chosen


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
    """Delete the temporary directories and cgroups that runs of process ``pid`` left behind (killed mid-run)."""
    for name in os.listdir(tempfile.gettempdir()):
        if name.startswith(_dir_prefix(pid)):
            shutil.rmtree(os.path.join(tempfile.gettempdir(), name), ignore_errors=True)
    remove_stale(pid)


def _prepare_dirs(uid: int | None) -> tuple[str, str]:
    """The run's directory (only this process reads it) with ``work`` (the fallback's scratch) and ``view``
    (the mount point of the program's own root)."""
    root = tempfile.mkdtemp(prefix=_dir_prefix(os.getpid()))
    os.chmod(root, 0o711)  # the program may traverse to work/, not list or open the capture files
    work = os.path.join(root, "work")
    os.mkdir(work, 0o700)
    os.mkdir(os.path.join(root, "view"), 0o755)
    if uid is not None:
        os.chown(work, uid, uid)
    return root, work


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(text)
    os.chmod(path, 0o600)  # read by the bootstrap before it drops privileges, never by the program


Probe = tuple[str, str]  # ("exec", statements) | ("probe", expression)


def run_python(source: str, *, stdin: bytes = b"", probes: Sequence[Probe] | None = None,
               config: SandboxConfig = SandboxConfig()) -> SandboxResult:
    """Run ``source`` as a program in the sandbox.

    stdio mode (``probes is None``): ``stdin`` is fed to the program run as ``__main__``. Probe mode: the
    program is executed as module ``solution``, then each step runs in its namespace in order: ``("exec",
    code)`` runs test set-up, ``("probe", expression)`` evaluates the expression and reports its value as plain
    data (``SandboxResult.probes[step]``: exact builtin types, NumPy values through ``tolist``; anything else,
    or an exception, leaves that step and the rest unreported). Reported values come from an untrusted process:
    compare them with what you expect, never hand it what you expect.
    """
    with _RUN_LOCK:
        uid = sandbox_uid() if config.drop_privileges else None
        root, work = _prepare_dirs(uid)
        cgroup = SandboxCgroup.create(config.memory_bytes, config.max_processes + 2) if config.cgroups else None
        try:
            return _run_in(root, work, uid, source, stdin, probes, config, cgroup)
        finally:
            if cgroup is not None:
                cgroup.kill_all()
                cgroup.remove()
            if uid is not None:
                kill_sandbox_processes()
            shutil.rmtree(root, ignore_errors=True)


def _bootstrap_config(root, work, uid, probes, config, cgroup) -> dict:
    exe = _run_python_of(config, uid)
    binds = _binds(exe) if config.namespaces else []
    return {"root": root, "work": work, "uid": uid, "gid": uid, "rlimits": _rlimits(config, uid),
            "namespaces": config.namespaces, "mode": "stdio" if probes is None else "probe",
            "parent_pid": os.getpid(), "python": exe, "binds": binds, "hide": _hidden(exe, binds),
            "disk_bytes": config.max_disk_bytes, "max_inodes": config.max_inodes,
            "cgroup_procs": cgroup.procs_files if cgroup else [],
            "cgroup_layers": [f"cgroup_{c}" for c in cgroup.controllers] if cgroup else []}


def _run_in(root, work, uid, source, stdin, probes, config, cgroup) -> SandboxResult:
    _write(os.path.join(root, "solution.py"), source)
    if probes is not None:
        _write(os.path.join(root, "plan.json"), json.dumps([list(p) for p in probes]))
    cfg = _bootstrap_config(root, work, uid, probes, config, cgroup)
    with tempfile.TemporaryFile(dir=root) as fin, tempfile.TemporaryFile(dir=root) as fout, \
            tempfile.TemporaryFile(dir=root) as ferr, tempfile.TemporaryFile(dir=root) as fres, \
            tempfile.TemporaryFile(dir=root) as flayers:
        fin.write(stdin)
        fin.seek(0)
        cfg.update(result_fd=fres.fileno(), layers_fd=flayers.fileno())
        start = time.monotonic()
        exit_code, timed_out = _spawn_and_wait(cfg, (fin, fout, ferr), (fres, flayers), work, config.wall_s)
        wall = time.monotonic() - start
        out, stderr_head = _head(fout, config.max_output_bytes + 1), _head(ferr, 8192)
        results, layers = _head(fres, config.max_output_bytes), _head(flayers, 4096)
    return SandboxResult(exit_code=exit_code, timed_out=timed_out, stdout=out[: config.max_output_bytes],
                         stderr_head=stderr_head, output_truncated=len(out) > config.max_output_bytes,
                         layers=_parse_layers(layers.split(b"\n")[0]), wall_s=wall,
                         memory_exceeded=cgroup is not None and cgroup.memory_exceeded(),
                         probes=_parse_probes(results) if probes is not None else {})


def _head(f, limit: int) -> bytes:
    f.seek(0)
    return f.read(limit)


def _parse_layers(line: bytes) -> tuple[str, ...]:
    try:
        return tuple(json.loads(line))
    except ValueError:
        return ()


_TAGS = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


def decode_value(encoded: Any) -> Any:
    """The plain value ``sandbox_bootstrap.encode_value`` encoded; ValueError (or TypeError) on anything else.
    Only builtin types come out, so comparing the result runs no code of the program's."""
    if encoded is None or type(encoded) in (bool, int, str):
        return encoded
    if type(encoded) is not list or not encoded or type(encoded[0]) is not str:
        raise ValueError("not an encoded value")
    tag, *payload = encoded
    if tag == "float" and len(payload) == 1:
        return float(payload[0])
    if tag == "complex" and len(payload) == 2:
        return complex(float(payload[0]), float(payload[1]))
    if tag == "bytes" and len(payload) == 1:
        return bytes.fromhex(payload[0])
    if tag in _TAGS and len(payload) == 1 and type(payload[0]) is list:
        return _TAGS[tag](decode_value(v) for v in payload[0])
    if tag == "dict" and len(payload) == 1 and type(payload[0]) is list:
        return {decode_value(k): decode_value(v) for k, v in payload[0]}
    raise ValueError(f"unknown encoded value tag {tag!r:.40}")


def _parse_probes(data: bytes) -> dict[int, Any]:
    """``{step: value}`` from the program's result lines; the first well-formed line for a step counts."""
    values: dict[int, Any] = {}
    for line in data.split(b"\n"):
        try:
            step, encoded = json.loads(line)
            if type(step) is int and step not in values:
                values[step] = decode_value(encoded)
        except (ValueError, TypeError, RecursionError, MemoryError):
            continue
    return values


def _spawn_and_wait(cfg, stdio, result_files, work, wall_s) -> tuple[int | None, bool]:
    env = {"PATH": _PATH, "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    proc = subprocess.Popen([cfg["python"], "-I", "-B", _BOOTSTRAP, json.dumps(cfg)], stdin=stdio[0],
                            stdout=stdio[1], stderr=stdio[2], cwd=work, env=env, start_new_session=True,
                            pass_fds=tuple(f.fileno() for f in result_files))
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


_STRONG_LAYERS = ("netns", "pidns", "mount_view", "cgroup_memory")


def describe(config: SandboxConfig = SandboxConfig(wall_s=30)) -> str:
    """One start-up line: which Python runs programs and which layers contain them, with what is missing."""
    info, layers = interpreter_info(config), available_layers(config)
    missing = [layer for layer in _STRONG_LAYERS if layer not in layers]
    line = f"code_tests sandbox: {info['python']} (Python {info['version']}); layers: {', '.join(layers)}"
    return line + (f"; warning: without {', '.join(missing)} (docs/rewards.md#the-code-sandbox)" if missing else "")


def available_layers(config: SandboxConfig = SandboxConfig(wall_s=30)) -> tuple[str, ...]:
    """The layers a run with ``config`` gets on this machine (runs a trivial program once)."""
    return run_python("pass", config=config).layers
