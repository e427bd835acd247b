"""What a sandboxed program can reach and consume. Expected outcomes: 0 channels open (no host file, process,
socket or network), memory, disk, processes and wall time bounded per sample, every sample of a mixed batch
scored, nothing left behind (processes, temporary directories, cgroups).

A channel program prints OPEN when its attempt succeeds, so a hole shows as that word in its output."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

import r1_megatron
from r1_megatron.rewards import RewardConfig, RewardRunner, SandboxConfig, code_tests, run_python
from r1_megatron.rewards.sandbox import available_layers, interpreter_info, sandbox_uid
from r1_megatron.rewards.sandbox_cgroup import hierarchies

LAYERS = set(available_layers())
needs_view = pytest.mark.skipif("mount_view" not in LAYERS, reason="no mount namespace on this machine")
needs_cgroup = pytest.mark.skipif("cgroup_memory" not in LAYERS, reason="no writable cgroup hierarchy here")


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def attempt(body: str) -> str:
    """A program that runs ``body`` (which sets ``opened``) and prints OPEN when it got through."""
    code = "opened = False\ntry:\n" + "".join(f"    {line}\n" for line in body.splitlines())
    code += "except Exception:\n    pass\nprint('OPEN' if opened else 'closed')\n"
    result = run_python(code)
    assert result.exit_code == 0, result.stderr_head
    return result.stdout.decode().strip()


@pytest.fixture
def host_files():
    """A world-readable directory outside the sandbox holding a dataset and a world-connectable unix socket."""
    directory = tempfile.mkdtemp(prefix="r1_adv_host_")
    os.chmod(directory, 0o755)
    data = os.path.join(directory, "answers.jsonl")
    with open(data, "w") as f:
        f.write('{"answer": "42"}\n')
    os.chmod(data, 0o644)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(os.path.join(directory, "sock"))
    os.chmod(os.path.join(directory, "sock"), 0o777)
    listener.listen(4)
    yield directory
    listener.close()
    shutil.rmtree(directory)


@needs_view
@pytest.mark.parametrize("what, body", [
    ("project source", f"open({r1_megatron.__file__!r}).read()\nopened = True"),
    ("the home directory", "import os\nos.listdir(os.path.expanduser('~root'))\nopened = True"),
    ("/etc/passwd", "open('/etc/passwd').read()\nopened = True"),
    ("/run and /var", "import os\nopened = bool(os.listdir('/run') or os.listdir('/var'))"),
    ("/sys", "import os\nopened = bool(os.listdir('/sys'))"),
    ("the host's /tmp", "import os\nopened = any(n.startswith('r1_') for n in os.listdir('/tmp'))"),
])
def test_no_host_file_is_visible(what, body):
    assert attempt(body) == "closed", what


@needs_view
def test_world_readable_dataset_and_unix_socket_are_unreachable(host_files):
    assert attempt(f"open({os.path.join(host_files, 'answers.jsonl')!r}).read()\nopened = True") == "closed"
    connect = f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({os.path.join(host_files, 'sock')!r})"
    assert attempt(connect + "\nopened = True") == "closed"


def test_abstract_unix_socket_and_loopback_tcp_are_unreachable():
    name = f"\0r1_adv_{os.getpid()}"
    abstract, tcp = socket.socket(socket.AF_UNIX), socket.socket()
    abstract.bind(name)
    abstract.listen(4)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(4)
    try:
        assert attempt(f"import socket\nsocket.socket(socket.AF_UNIX).connect({name!r})\nopened = True") == "closed"
        port = tcp.getsockname()[1]
        assert attempt(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), 1)\nopened = True") == "closed"
    finally:
        abstract.close()
        tcp.close()


@needs_view
def test_proc_shows_only_the_runs_own_processes():
    bystander = subprocess.Popen(["sh", "-c", "sleep 60 # R1_ADV_MARKER"])
    try:
        scan = ("import os\nfor pid in filter(str.isdigit, os.listdir('/proc')):\n"
                "    if b'R1_ADV_MARKER' in open(f'/proc/{pid}/cmdline', 'rb').read():\n        opened = True")
        assert attempt(scan) == "closed"
        assert attempt(f"open('/proc/{os.getpid()}/environ').read()\nopened = True") == "closed"
        pids = run_python("import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
        assert pids.stdout.decode().strip() == "[1]"  # pid 1 is the program itself
    finally:
        bystander.kill()
        bystander.wait()


@needs_cgroup
def test_memory_is_bounded_for_all_processes_together():
    """Six processes of 400 MiB each: every one is under RLIMIT_AS (1 GiB), together over the run's 1 GiB."""
    code = ("import os, time\nkids = []\nfor _ in range(6):\n    pid = os.fork()\n    if pid == 0:\n"
            "        x = bytearray(400 << 20)\n        time.sleep(2)\n        os._exit(0)\n    kids.append(pid)\n"
            "print(sum(os.waitpid(k, 0)[1] == 0 for k in kids))")
    start = time.monotonic()
    result = run_python(code, config=SandboxConfig(wall_s=8.0))
    assert result.memory_exceeded and int(result.stdout) <= 2  # at most two fit in the run's 1 GiB
    assert time.monotonic() - start < 10


@needs_view
def test_disk_is_bounded_per_run_and_the_next_run_is_unaffected():
    fill = ("import os\nwritten = 0\ntry:\n    with open('/tmp/fill', 'wb') as f:\n        while True:\n"
            "            f.write(b'x' * (1 << 20))\n            written += 1 << 20\nexcept OSError as e:\n"
            "    print(e.errno, written)\n")
    config = SandboxConfig(max_disk_bytes=8 << 20, max_file_bytes=64 << 20)
    errno_code, written = run_python(fill, config=config).stdout.split()
    assert errno_code == b"28" and int(written) <= 8 << 20  # ENOSPC at the quota
    inodes = ("import os\nn = 0\ntry:\n    while True:\n        open(f'/tmp/{n}', 'w').close()\n        n += 1\n"
              "except OSError as e:\n    print(e.errno, n)\n")
    errno_code, count = run_python(inodes, config=SandboxConfig(max_inodes=256)).stdout.split()
    assert errno_code == b"28" and int(count) <= 256
    assert run_python("open('/tmp/x', 'w').write('ok')\nprint(open('/tmp/x').read())").stdout == b"ok\n"


def _sandbox_leftovers():
    uid = sandbox_uid()
    procs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
            if uid is not None and os.stat(f"/proc/{pid}").st_uid >= 1_500_000_000 and state != "Z":
                procs.append(pid)
        except OSError:
            pass
    dirs = [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("r1_sandbox_")]
    cgroups = [n for h in hierarchies() for n in os.listdir(h.base) if n.startswith("r1-sandbox-")]
    return procs, dirs, cgroups


def test_a_mixed_batch_is_scored_whole_and_leaves_nothing_behind():
    """Bombs next to honest programs in one reward batch: the honest ones score 1.0, the rest 0.0, in bounded
    time, and afterwards no sandbox process, temporary directory or cgroup remains."""
    honest = "a, b = map(int, input().split())\nprint(a + b)"
    bombs = {
        "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "memory": "x = []\nwhile True:\n    x.append(bytearray(50 << 20))",
        "disk": "with open('/tmp/f', 'wb') as f:\n    while True:\n        f.write(b'x' * (1 << 20))",
        "sleep": "import time\ntime.sleep(600)",
        "setsid orphan": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\nprint(4)",
    }
    programs = [honest, *bombs.values(), honest]
    tests = [{"input": "1 2", "output": "3"}]
    config = RewardConfig(weights={"code_tests": 1.0}, reward_kwargs={"code_tests": {"timeout_s": 2.0}},
                          num_workers=2, timeout_s=20.0)
    start = time.monotonic()
    with RewardRunner(config) as runner:
        batch = runner.score([fenced(p) for p in programs], [{"answer": None, "tests": tests}] * len(programs))
    assert batch.total == [1.0] + [0.0] * len(bombs) + [1.0]
    assert batch.failure == [None] * len(programs)
    assert time.monotonic() - start < 60
    deadline = time.monotonic() + 5
    while any(_sandbox_leftovers()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sandbox_leftovers() == ([], [], [])


@pytest.fixture
def code_env():
    """A fresh world-readable virtualenv (from the system Python) and its site-packages directory."""
    base = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else interpreter_info()["python"]
    env = tempfile.mkdtemp(prefix="r1_adv_env_")
    os.chmod(env, 0o755)
    subprocess.run([base, "-m", "venv", "--without-pip", env], check=True)
    python = os.path.join(env, "bin", "python")
    site = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                          text=True, check=True).stdout.strip()
    yield python, site
    shutil.rmtree(env)


def _install(site: str, relative: str, text: str) -> None:
    path = os.path.join(site, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    subprocess.run(["chmod", "-R", "a+rX", site], check=True)


def test_the_interpreter_is_declared_and_a_recipe_can_choose_one(code_env):
    """``interpreter_info`` names the Python that runs programs; ``code_tests(python=...)`` picks another, whose
    installed packages (here a stand-in for numpy in a fresh virtualenv) import inside the view."""
    info = interpreter_info()
    assert os.path.isabs(info["python"]) and info["version"].count(".") == 2
    python, site = code_env
    _install(site, "r1_adv_numeric.py", "def square(x):\n    return x * x\n")
    program = fenced("from r1_adv_numeric import square\nprint(square(int(input())))")
    tests = [{"input": "7", "output": "49"}]
    assert code_tests(program, tests) == 0.0  # not installed for the default interpreter
    assert code_tests(program, tests, python=python) == 1.0


@needs_view
def test_an_installed_copy_of_this_project_is_hidden(code_env):
    """A non-editable install puts r1_megatron, with the benchmark files it ships (answers included), inside the
    interpreter's prefix: the view covers it with an empty directory."""
    python, site = code_env
    _install(site, "r1_megatron/__init__.py", "")
    _install(site, "r1_megatron/evaluation/data/answers.csv", "question,answer\nq,SECRET_ANSWER\n")
    reader = ("import glob\nopened = any('SECRET_ANSWER' in open(p).read() for p in "
              f"glob.glob({site!r} + '/**/*.csv', recursive=True))")
    code = f"opened = False\ntry:\n    import r1_megatron\n    opened = True\nexcept ImportError:\n    pass\n{reader}\n"
    result = run_python(code + "print('OPEN' if opened else 'closed')", config=SandboxConfig(python=python))
    assert result.stdout == b"closed\n", result.stderr_head


def test_a_missing_interpreter_is_a_clear_error():
    with pytest.raises((RuntimeError, ValueError), match="python"):
        code_tests(fenced("print(1)"), [{"input": "", "output": "1"}], python="relative/python")
    if sandbox_uid() is not None:
        with pytest.raises(RuntimeError, match="/nonexistent/python"):
            code_tests(fenced("print(1)"), [{"input": "", "output": "1"}], python="/nonexistent/python")
    assert sys.executable  # the test process itself is untouched


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"),
                    reason="needs root (to become an unprivileged user), setpriv and /usr/bin/python3")
def test_unprivileged_callers_get_the_same_view_without_capabilities():
    """Without root the layers come from a user namespace, in which the program would own every capability:
    it must hold none (it could otherwise remount its read-only binds writable)."""
    package = tempfile.mkdtemp(prefix="r1_adv_unpriv_")
    try:
        os.makedirs(os.path.join(package, "pkg"))
        here = os.path.dirname(os.path.abspath(run_python.__code__.co_filename))
        for name in ("sandbox.py", "sandbox_cgroup.py", "sandbox_bootstrap.py"):
            shutil.copy(os.path.join(here, name), os.path.join(package, "pkg", name))
        open(os.path.join(package, "pkg", "__init__.py"), "w").close()
        subprocess.run(["chmod", "-R", "a+rX", package], check=True)
        script = ("import sys\nsys.path.insert(0, sys.argv[1])\nfrom pkg.sandbox import run_python\n"
                  "r = run_python(\"print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\")\n"
                  "print(','.join(r.layers), r.stdout.decode().strip())\n")
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c",
                              script, package], capture_output=True, text=True, timeout=60, cwd="/")
        layers, capabilities = out.stdout.split()
        if "netns" not in layers:
            pytest.skip(f"unprivileged user namespaces are disabled here: {layers}")
        assert {"mount_view", "own_proc", "pidns"} <= set(layers.split(",")) and "uid" not in layers
        assert int(capabilities, 16) == 0
    finally:
        shutil.rmtree(package)


def test_a_code_run_says_which_python_runs_the_code_and_how_it_is_contained():
    from r1_megatron.grpo.config import RewardsConfig
    from r1_megatron.grpo.task import sandbox_notes

    assert sandbox_notes(RewardsConfig()) == []  # math and format run no code
    (line,) = sandbox_notes(RewardsConfig(weights={"code_tests": 1.0}, accuracy="code_tests", format=None))
    assert line.startswith(f"code_tests sandbox: {interpreter_info()['python']} (Python ")
    assert all(layer in line for layer in LAYERS)
