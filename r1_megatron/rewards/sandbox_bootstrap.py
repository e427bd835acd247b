"""Entry point of one sandboxed program run (executed as a script by ``sandbox.py``; stdlib only).

It starts as the caller's user and builds the namespaces it is allowed to build. With a new PID namespace it
stays outside as a supervisor and forks the program's process (pid 1 inside), relaying its exit status.
The program's process sets rlimits, drops privileges, writes the list of active layers to the result fd,
and runs the untrusted program. See ``sandbox.py`` for what
each layer guarantees.
"""
import ctypes
import json
import os
import re
import resource
import runpy
import signal
import sys

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
PR_SET_PDEATHSIG, SIGKILL = 1, 9
# Kept on remount: inside a user namespace these flags are locked and dropping one fails with EPERM.
_MOUNT_OPTION_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": 1024,
                       "nodiratime": 2048, "relatime": 1 << 21, "strictatime": 1 << 24}

_libc = ctypes.CDLL(None, use_errno=True)


def _unshare(flags):
    return _libc.unshare(ctypes.c_int(flags)) == 0


def _mount(source, target, flags):
    return _libc.mount(source, target.encode(), None, ctypes.c_ulong(flags), None) == 0


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
    """In a fresh mount namespace: every mount read-only, except a bind mount of ``work`` (True on success)."""
    if not _mount(b"none", "/", MS_REC | MS_PRIVATE):
        return False
    if not _mount(work.encode(), work, MS_BIND):
        return False
    ok = True
    for path, flags in _mountpoints():
        if path != work:
            ok &= _mount(None, path, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
    return ok


def _namespaces(cfg):
    """Enter new namespaces where allowed; return the names of those made."""
    if not cfg["namespaces"]:
        return []
    # Without root, a new user namespace grants the rights to build the other namespaces.
    flags = (CLONE_NEWUSER if cfg["uid"] is None else 0) | CLONE_NEWNS | CLONE_NEWNET
    if _unshare(flags | CLONE_NEWPID):
        layers = ["netns", "pidns"]
    elif _unshare(flags):
        layers = ["netns"]
    else:
        return []
    if _read_only_except(cfg["work"]):
        layers.append("readonly_fs")
    return layers


def _relay_exit(child):
    """Wait for the program (pid 1 of the new PID namespace) and exit the way it did."""
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


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


def _run(cfg, result):
    program = os.path.join(cfg["work"], "solution.py")
    sys.path[0] = cfg["work"]
    sys.argv = [program]
    if cfg["mode"] == "stdio":
        runpy.run_path(program, run_name="__main__")
        return
    nonce = sys.stdin.buffer.readline()  # read before the untrusted code runs; it cannot print it blindly
    sys.stdin = open(os.devnull)
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    with open(program) as f:
        exec(compile(f.read(), program, "exec"), namespace)
    with open(os.path.join(cfg["work"], "tests.py")) as f:
        exec(compile(f.read(), "tests.py", "exec"), namespace)
    sys.stdout.flush()
    os.write(result, nonce)


def main():
    cfg = json.loads(sys.argv[1])
    _libc.prctl(PR_SET_PDEATHSIG, SIGKILL)  # this supervisor dies with the caller, and the program with it
    if os.getppid() != cfg["parent_pid"]:
        os._exit(137)
    layers = _namespaces(cfg)
    if "pidns" in layers:
        child = os.fork()  # the first child is pid 1 of the new namespace
        if child:
            _relay_exit(child)
    layers += _confine(cfg, "pidns" in layers)
    if "uid" not in layers or "netns" not in layers:
        _audit_guard(block_network="netns" not in layers)
        layers.append("audit_hook")
    os.write(cfg["result_fd"], (json.dumps(layers) + "\n").encode())
    os.chdir(cfg["work"])
    _run(cfg, cfg["result_fd"])


if __name__ == "__main__":
    main()
