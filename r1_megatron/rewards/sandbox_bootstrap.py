"""Entry point of one sandboxed program run (executed as a script by ``sandbox.py``; stdlib only).

It starts as the caller's user, joins the run's cgroup and builds the namespaces it is allowed to build. With a
new PID namespace it stays outside as a supervisor and forks the program's process (pid 1 inside), relaying its
exit status. The program's process builds its own filesystem view (``_build_view``), sets rlimits, drops
privileges, reports the active layers on the layers fd (closed before untrusted code runs) and runs the program.
See ``sandbox.py`` for what each layer guarantees.

Nothing this process writes after the untrusted code starts is trusted by the caller: in probe mode the values
it reports are plain data that the caller compares with expected values the program never sees.
"""
import builtins
import ctypes
import json
import os
import platform
import re
import resource
import runpy
import signal
import sys

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
MNT_DETACH, PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, SIGKILL = 2, 1, 38, 9
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine())
# Kept on remount: inside a user namespace these flags are locked and dropping one fails with EPERM.
_MOUNT_OPTION_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": 1024,
                       "nodiratime": 2048, "relatime": 1 << 21, "strictatime": 1 << 24}
_DEVICES = ("null", "zero", "full", "random", "urandom")
SCRATCH = "/tmp"  # the program's cwd, HOME and TMPDIR inside its own view

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _unshare(flags):
    return _libc.unshare(ctypes.c_int(flags)) == 0


def _mount(source, target, flags, fstype=None, data=None):
    encode = lambda s: s.encode() if isinstance(s, str) else s  # noqa: E731
    return _libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)) == 0


def _mountpoints():
    """(path, per-mount flags) of every mount, from /proc/self/mountinfo (octal escapes decoded)."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            path = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            flags = sum(_MOUNT_OPTION_FLAGS.get(opt, 0) for opt in fields[5].split(","))
            points.append((path, flags))
    return points


def _read_only_except(work):
    """Fallback without a view: every mount read-only, except a bind mount of ``work`` (True on success)."""
    if not _mount(work, work, MS_BIND):
        return False
    ok = True
    for path, flags in _mountpoints():
        if path != work:
            ok &= _mount(None, path, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
    return ok


def _enter_user_namespace():
    """Without root: a new user namespace (the rights to build the others), keeping our own uid and gid."""
    uid, gid = os.getuid(), os.getgid()
    if not _unshare(CLONE_NEWUSER):
        return False
    try:
        for name, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    except OSError:
        pass  # unmapped ids still work for everything the sandbox does; files are only written to tmpfs
    return True


def _namespaces(cfg):
    """Enter new namespaces where allowed: (the names of those made, whether this mount namespace's mounts are
    private, so that a filesystem view may be built in it without anything propagating to the host)."""
    if not cfg["namespaces"]:
        return [], False
    if cfg["uid"] is None and not _enter_user_namespace():
        return [], False
    flags = CLONE_NEWNS | CLONE_NEWNET
    if _unshare(flags | CLONE_NEWPID):
        layers = ["netns", "pidns"]
    elif _unshare(flags):
        layers = ["netns"]
    else:
        return [], False
    return layers, _mount("none", "/", MS_REC | MS_PRIVATE)


def _bind(host_path, view):
    """Bind ``host_path`` at the same path inside ``view`` (a symlink is recreated as a symlink)."""
    target = view + host_path
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.islink(host_path):
        os.symlink(os.readlink(host_path), target)
        return True
    if os.path.isdir(host_path):
        os.makedirs(target, exist_ok=True)
    else:
        open(target, "w").close()
    return _mount(host_path, target, MS_BIND | MS_REC)


def _populate_view(cfg, view):
    """A size-limited /tmp, the interpreter and its libraries read-only, a few devices, a fresh /proc. The
    scratch comes first so that an interpreter installed under /tmp is bound on top of it, not hidden by it."""
    owner = f",uid={cfg['uid']},gid={cfg['gid']}" if cfg["uid"] is not None else ""
    os.makedirs(view + SCRATCH)
    scratch = f"size={cfg['disk_bytes']},nr_inodes={cfg['max_inodes']},mode=0700{owner}"
    ok = _mount("tmpfs", view + SCRATCH, MS_NOSUID | MS_NODEV, "tmpfs", scratch)
    ok &= all(_bind(path, view) for path in cfg["binds"])
    for path in cfg["hide"]:  # an empty, read-only directory over it
        ok &= _mount("tmpfs", view + path, MS_RDONLY | MS_NOSUID | MS_NODEV, "tmpfs", "size=4k,mode=0555")
    ok &= all(_bind(f"/dev/{name}", view) for name in _DEVICES)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{view}/dev/{name}")
    for path, flags in _mountpoints():  # binds keep their host flags; make each one read-only
        if path.startswith(view + "/") and path != view + SCRATCH:
            ok &= _mount(None, path, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
    os.makedirs(view + "/proc")
    own_proc = _mount("proc", view + "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "proc")
    return ok, own_proc


def _pivot_into(view):
    """Make ``view`` the root and detach the old one, so no path leads back to the host's files."""
    os.chdir(view)
    if _libc.syscall(ctypes.c_long(_PIVOT_ROOT), b".", b".") != 0:
        return False
    _libc.umount2(b".", MNT_DETACH)
    os.chdir("/")
    return _mount(None, "/", MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _build_view(cfg):
    """Layers of the program's own filesystem view, or [] when it could not be built (the caller falls back)."""
    view = os.path.join(cfg["root"], "view")
    if _PIVOT_ROOT is None or not _mount("tmpfs", view, MS_NOSUID | MS_NODEV, "tmpfs", "size=1m,mode=0755"):
        return []
    populated, own_proc = _populate_view(cfg, view)
    if not populated or not _pivot_into(view):
        return []
    return ["mount_view", "disk_quota"] + (["own_proc"] if own_proc else [])


def _relay_exit(child):
    """Wait for the program (pid 1 of the new PID namespace) and exit the way it did."""
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _drop_capabilities():
    """In a user namespace we are its owner with every capability in it: keep none (and gain none by exec)."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    return _libc.syscall(ctypes.c_long(126 if platform.machine() == "x86_64" else 91), header, data) == 0


def _confine(cfg, in_pidns):
    """rlimits, then the unprivileged identity; return the names of the layers made."""
    for name, (soft, hard) in cfg["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    layers = ["rlimits"]
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
        layers.append("uid")
    elif cfg["namespaces"] and not _drop_capabilities():
        # in our own user namespace we would keep every capability in it (and could undo the read-only binds)
        os.write(2, b"sandbox: could not drop the user namespace's capabilities; not running the program\n")
        os._exit(126)
    _libc.prctl(PR_SET_PDEATHSIG, SIGKILL)  # after setuid: a credential change clears it
    if not in_pidns and os.getppid() != cfg["parent_pid"]:
        os._exit(137)  # the parent died before prctl took effect
    return layers


def _audit_guard(block_network):
    """Speed bump used when the kernel layers are missing: refuse sockets and signals to other processes.

    An audit hook cannot be removed from Python, but native code (ctypes) bypasses it; this is not a boundary.
    """
    own_pid, own_pgid = os.getpid(), os.getpgid(0)
    network = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo"}

    def hook(event, args):
        if event == "ctypes.dlopen" or (block_network and event in network):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "os.kill" and args[0] not in (own_pid, 0):
            raise PermissionError("sandbox: signalling other processes is not allowed")
        if event == "os.killpg" and args[0] != own_pgid:
            raise PermissionError("sandbox: signalling other process groups is not allowed")

    sys.addaudithook(hook)


_SCALARS = (int, str, bool, type(None))


def encode_value(value, depth=0):
    """Plain data as JSON: scalars as themselves, everything else tagged ``[type, payload]`` (floats as their repr,
    so inf and nan survive). Only exact builtin types (and NumPy values, through ``tolist``) are accepted; a
    subclass or any other object raises TypeError, so no object's own ``__eq__`` reaches the comparison."""
    if depth > 100:
        raise TypeError("nested too deeply")
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is float:
        return ["float", repr(value)]
    if kind is complex:
        return ["complex", repr(value.real), repr(value.imag)]
    if kind is bytes:
        return ["bytes", value.hex()]
    if kind in (list, tuple, set, frozenset):
        return [kind.__name__, [encode_value(v, depth + 1) for v in value]]
    if kind is dict:
        return ["dict", [[encode_value(k, depth + 1), encode_value(v, depth + 1)] for k, v in value.items()]]
    if getattr(kind, "__module__", "") == "numpy" and hasattr(value, "tolist"):
        return encode_value(value.tolist(), depth + 1)
    raise TypeError(f"a {kind.__name__} is not plain data")


def _run_probes(program, path, plan, result_fd):
    """Run the program as module ``solution``, then the plan's steps in its namespace: ``["exec", code]`` runs
    test set-up, ``["probe", expression]`` reports the expression's value as ``[step, encoded]``. Stops at the
    first exception. The references used here are taken before the program can replace them."""
    exec_, compile_, eval_, dumps, write = builtins.exec, builtins.compile, builtins.eval, json.dumps, os.write
    namespace = {"__name__": "solution", "__builtins__": builtins}
    exec_(compile_(program, path, "exec"), namespace)
    for index, (kind, source) in enumerate(plan):
        if kind == "exec":
            exec_(compile_(source, "<test>", "exec"), namespace)
            continue
        value = eval_(compile_(source, "<test>", "eval"), namespace)
        write(result_fd, (dumps([index, encode_value(value)]) + "\n").encode())


def _read_inputs(cfg):
    """The program and the probe plan, read from the caller's run directory before the view hides it."""
    with open(os.path.join(cfg["root"], "solution.py"), encoding="utf-8", errors="surrogatepass") as f:
        program = f.read()
    plan = None
    if cfg["mode"] == "probe":
        with open(os.path.join(cfg["root"], "plan.json"), encoding="utf-8") as f:
            plan = json.load(f)
    return program, plan


def _enter_scratch(cfg, in_view, program):
    """cwd, HOME and TMPDIR; the program's file written there. Returns the program's path."""
    work = SCRATCH if in_view else cfg["work"]
    os.environ.update(HOME=work, TMPDIR=work)
    os.chdir(work)
    path = os.path.join(work, "solution.py")
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(program)
    sys.path[0] = work
    sys.argv = [path]
    return path


def main():
    cfg = json.loads(sys.argv[1])
    _libc.prctl(PR_SET_PDEATHSIG, SIGKILL)  # this supervisor dies with the caller, and the program with it
    if os.getppid() != cfg["parent_pid"]:
        os._exit(137)
    for procs in cfg["cgroup_procs"]:  # before any fork: every process of the run is inside
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
    layers, private = _namespaces(cfg)
    if "pidns" in layers:
        child = os.fork()  # the first child is pid 1 of the new namespace
        if child:
            os.close(cfg["layers_fd"])
            _relay_exit(child)
    program, plan = _read_inputs(cfg)
    view = _build_view(cfg) if private else []
    if private and not view and _read_only_except(cfg["work"]):
        view = ["readonly_fs"]
    layers += view + cfg["cgroup_layers"] + _confine(cfg, "pidns" in layers)
    if "uid" not in layers or "netns" not in layers:
        _audit_guard(block_network="netns" not in layers)
        layers.append("audit_hook")
    path = _enter_scratch(cfg, "mount_view" in layers, program)
    os.write(cfg["layers_fd"], (json.dumps(layers) + "\n").encode())
    os.close(cfg["layers_fd"])
    if plan is None:
        runpy.run_path(path, run_name="__main__")
    else:
        sys.stdin = open(os.devnull)
        _run_probes(program, path, plan, cfg["result_fd"])


if __name__ == "__main__":
    main()
