"""Nothing of a run outlives it: its child processes die with it, and what a killed run leaves in the temp
directory is removed by the next run on the machine.

A SIGKILLed process runs no cleanup, so each thing it starts must end, or be removed, without its help:

- Megatron's checkpoint writer (dist_checkpointing's ``FileSystemWriterAsync``) collects its results in the
  queue of a spawned multiprocessing Manager, a server process of ~270 MB per rank started at the first save
  and never stopped; the trainer's SIGKILL orphaned it for good, and with it multiprocessing's resource tracker,
  whose pipe it held. r1_megatron saves synchronously: the writer's function runs in the trainer itself, so an
  in-process queue carries the results and there is no server process at all.
- Processes forked from the trainer's main thread (Megatron's per-save file writers) get the kernel's parent
  death signal: a kill mid-save does not leave them writing into the checkpoint the next run removes.
- Reward workers call ``exit_with_creator()``: a worker busy in a hung sample never reads the trainer's end of its
  pipe closing, and the death signal would not help, as its parent (the forkserver) lives while any worker does.
  The code sandbox's processes die with the worker (rewards/sandbox_bootstrap.py).
- A torchrun rank dies with torchrun's agent (the parent death signal).
- multiprocessing's temp directory (the forkserver's socket) is ``r1mp-<pid>-<start time>-<random>`` instead of
  ``pymp-<random>``, so its owner is known: each run's start removes the directories of owners that are gone.

Linux only (PR_SET_PDEATHSIG, /proc); elsewhere the death signal is a documented no-op and a directory's owner
is judged by its pid alone. The temp directory is assumed node-local, as /tmp is.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
from multiprocessing import process, util
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
TEMP_PREFIX = "r1mp-"
MAX_SOCKET_PATH = 107  # AF_UNIX's sun_path on Linux: 108 bytes with the terminating NUL
_LINUX = sys.platform.startswith("linux")
_libc = ctypes.CDLL(None, use_errno=True) if _LINUX else None  # loaded here: never dlopen in a forked child
_installed_in: int | None = None  # the pid that ran install() (a forked child inherits the flag, not the hooks' owner)


def die_with_parent(parent_pid: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent exits (PR_SET_PDEATHSIG); a no-op off Linux.

    The signal follows the parent *thread* that started this process, so call it only in children started from
    a thread that lives as long as its process (a main thread, the forkserver). `parent_pid`: the expected parent;
    if it is already gone (the signal would never come) this process exits at once with 137, like a SIGKILL.
    """
    if not _LINUX:
        return
    if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(137)


def exit_with_creator() -> None:
    """In a multiprocessing child: exit (code 137, as if SIGKILLed) as soon as the process that started it ends,
    whatever this one is doing. For a forkserver child that is the process that asked for it, not the forkserver.
    A daemon thread waits on multiprocessing's parent sentinel, a pipe that the creator holds open while it lives.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        raise RuntimeError("exit_with_creator() is for multiprocessing children; this process has no parent")

    def watch():
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(137)

    threading.Thread(target=watch, name="exit-with-creator", daemon=True).start()


def _start_time(pid: int) -> str | None:
    """The process's start time (/proc/PID/stat field 22, clock ticks since boot) in base 36: with the pid, an
    identity that pid reuse cannot fake. None: no such process. Off Linux: "0" for any live pid."""
    if not _LINUX:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, another user's
            pass
        return "0"
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # after "pid (comm)": state is field 3, starttime field 22
    return _base36(ticks)


def _base36(n: int) -> str:
    """Short, as the temp directory's path counts against AF_UNIX's ~107 characters (its sockets live there)."""
    digits = ""
    while True:
        n, d = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[d] + digits
        if not n:
            return digits


def owner_alive(name: str) -> bool:
    """Whether the process named by a temp directory name ``r1mp-<pid>-<start time>-<random>`` still runs.
    A name not of that form is never judged dead (True), so nothing else is ever removed."""
    parts = name.removeprefix(TEMP_PREFIX).split("-", 2)
    if not name.startswith(TEMP_PREFIX) or len(parts) != 3 or not parts[0].isdigit():
        return True
    return _start_time(int(parts[0])) == parts[1]


def sweep_dead_temp_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove the ``r1mp-*`` directories under `root` (default: the temp directory) whose owner is gone;
    returns them. Another user's directories stay (not ours to remove; rmtree fails quietly)."""
    removed = []
    for path in sorted(Path(root or tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*")):
        if path.is_dir() and not owner_alive(path.name):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _remove_own_temp_dir(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # not in a child forked with os.fork that exits through atexit
        shutil.rmtree(path, ignore_errors=True)


def _use_owned_temp_dir() -> None:
    """Point this process's multiprocessing temp directory, which its children inherit, at one named for it.
    multiprocessing keeps it in current_process()._config["tempdir"] (util.get_temp_dir creates it there on first
    use); one it made already is kept, and is removed at a normal exit as before. So is multiprocessing's own
    choice when the name would make its sockets' paths too long for AF_UNIX (TMPDIR over ~59 characters)."""
    config = process.current_process()._config
    if config.get("tempdir") is not None:
        return
    pid = os.getpid()
    prefix = f"{TEMP_PREFIX}{pid}-{_start_time(pid)}-"
    socket_path = os.path.join(tempfile.gettempdir(), prefix + "12345678", "listener-12345678")
    if len(socket_path) > MAX_SOCKET_PATH:
        return
    path = tempfile.mkdtemp(prefix=prefix)
    util.Finalize(None, _remove_own_temp_dir, args=(path, pid), exitpriority=-100)  # what get_temp_dir registers
    config["tempdir"] = path


def _collect_checkpoint_writes_in_process() -> None:
    """Replace the Manager queue of Megatron's checkpoint writer by an in-process one (module docstring).

    Valid for synchronous saves, the only kind r1_megatron makes: the writer puts its results and the saver
    reads them in this process. An asynchronous save (``async_sharded_save=True``) would write from another
    process, and Megatron would fail the save loudly ("results_queue should not be empty", or a pickling
    error), never hang or lose a checkpoint silently."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:  # a Manager made before install() stays (and is not ours)
        filesystem_async._results_queue = queue.Queue()


def _forked_children_die_with(owner_pid: int) -> None:
    """Every process this one forks from its main thread (not later threads: the signal follows the thread)
    gets the parent death signal. subprocess and multiprocessing's spawn/forkserver do not run fork hooks."""
    forking = threading.local()

    def before():
        forking.from_main = os.getpid() == owner_pid and threading.current_thread() is threading.main_thread()

    def after_in_child():
        if getattr(forking, "from_main", False):
            forking.from_main = False
            die_with_parent(owner_pid)

    os.register_at_fork(before=before, after_in_child=after_in_child)


def _die_with_torchrun_agent() -> None:
    """A torchrun rank (TORCHELASTIC_RUN_ID is set) dies with its agent, which starts ranks from its main thread
    in sessions of their own: a rank outliving a SIGKILLed torchrun would train on, in a run thought dead, next
    to the run that resumes it. A rank whose agent is already gone (parent 1) exits."""
    agent = os.getppid()
    if agent == 1:
        os._exit(137)
    die_with_parent(agent)


def install() -> None:
    """Set all of the above up for this process (once; later calls do nothing): sweep dead owners' temp
    directories, take an owned one, collect checkpoint writes in process, tie forked children to this one and,
    under torchrun, this rank to its agent."""
    global _installed_in
    pid = os.getpid()
    if _installed_in == pid:
        return
    sweep_dead_temp_dirs()
    _use_owned_temp_dir()
    _collect_checkpoint_writes_in_process()
    if _installed_in is None:  # fork hooks are inherited: a forked child that installs again must not add more
        _forked_children_die_with(pid)
        if "TORCHELASTIC_RUN_ID" in os.environ:
            _die_with_torchrun_agent()
    _installed_in = pid
