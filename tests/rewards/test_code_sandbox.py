"""code_tests and the sandbox: passing/failing programs, and each hostile program contained.

Every hostile program prints the expected output AFTER its attack, so a failed containment would score 1.0
(and an attack on this process would kill the test run itself)."""
import os
import socket
import subprocess
import time

import pytest

from r1_megatron.rewards import SandboxConfig, code_tests, last_code_block, parse_test_cases, run_python
from r1_megatron.rewards.code_reward import AssertTest, FunctionalTest, StdioTest
from r1_megatron.rewards.sandbox import available_layers, sandbox_uid

ADD = [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4", "output": "6"}]


def fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\nDone."


def processes_of(uid):
    """Live (non-zombie) processes of ``uid``; killed orphans stay zombies until the system's init reaps them."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
            if os.stat(f"/proc/{pid}").st_uid == uid and state != "Z":
                found.append(pid)
        except OSError:
            pass
    return found


def assert_contained(code, timeout_s=1.0, budget_s=10.0):
    start = time.monotonic()
    assert code_tests(fenced(code), [{"input": "", "output": "3"}], timeout_s=timeout_s) == 0.0
    assert time.monotonic() - start < budget_s
    if sandbox_uid() is not None:
        assert processes_of(sandbox_uid()) == []


def test_stdio_program_fraction_and_all():
    good = fenced("a, b = map(int, input().split())\nprint(a + b)")
    assert code_tests(good, ADD) == 1.0
    half = fenced("a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)")
    assert code_tests(half, ADD) == 0.5
    assert code_tests(half, ADD, scoring="all") == 0.0


def test_assert_tests_and_early_exit():
    program = fenced("def double(x):\n    return 2 * x")
    assert code_tests(program, ["assert double(2) == 4", "assert double(3) == 6"]) == 1.0
    assert code_tests(program, ["assert double(2) == 4", "assert double(3) == 7"]) == 0.5
    # exiting with status 0 before the asserts run must not pass them
    assert code_tests(fenced("import os\nos._exit(0)"), ["assert False"]) == 0.0
    assert code_tests(fenced("import sys\nsys.exit(0)"), ["assert True"]) == 0.0


def test_no_code_or_crashing_code_scores_zero():
    assert code_tests("I cannot solve this.", ADD) == 0.0
    assert code_tests(fenced("raise SystemExit(3)"), ADD) == 0.0
    assert code_tests(fenced("print(1/0)"), ADD) == 0.0
    assert code_tests(fenced("this is not python"), ADD) == 0.0


def test_last_python_block_wins():
    text = "```python\nprint(1)\n```\n```bash\nls\n```\n```py\nprint(2)\n```"
    assert last_code_block(text) == "print(2)\n"


def test_test_case_formats_and_errors():
    assert parse_test_cases('{"inputs": ["1"], "outputs": ["2"]}') == [StdioTest("1", "2")]
    assert parse_test_cases(["assert f()"]) == [AssertTest("assert f()")]
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_test_cases("{oops")
    with pytest.raises(ValueError, match="2 inputs but 1 outputs"):
        parse_test_cases({"inputs": ["1", "2"], "outputs": ["1"]})
    with pytest.raises(ValueError, match="item 1"):
        parse_test_cases([{"input": "1", "output": "1"}, 7])
    with pytest.raises(ValueError, match="scoring"):
        code_tests(fenced("pass"), ADD, scoring="most")


def test_livecodebench_test_cases():
    """LiveCodeBench's public_test_cases: a JSON string of {"input", "output", "testtype"}; "stdin" cases are stdio
    tests, "functional" ones call func_name (carried into each case from the problem's metadata)."""
    stdin = '[{"input": "1 2\\n", "output": "3\\n", "testtype": "stdin"}]'
    assert parse_test_cases(stdin) == [StdioTest("1 2\n", "3\n")]
    functional = [{"input": "[1,2]\n3", "output": "[4, 5]", "testtype": "functional", "func_name": "addAll"}]
    assert parse_test_cases(functional) == [FunctionalTest("[1,2]\n3", "[4, 5]", "addAll")]
    with pytest.raises(ValueError, match="item 0 is a functional .* without a valid 'func_name'"):
        parse_test_cases([{"input": "[1]", "output": "1", "testtype": "functional"}])
    with pytest.raises(ValueError, match="testtype 'interactive'"):
        parse_test_cases([{"input": "1", "output": "1", "testtype": "interactive"}])


def test_functional_tests_call_the_solution_method():
    # LeetCode style: List from typing is in scope without an import; a tuple result compares as a list
    method = "class Solution:\n    def addAll(self, nums: List[int], k: int) -> List[int]:\n        return {}"
    tests = [{"input": "[1,2]\n3", "output": "[4, 5]", "testtype": "functional", "func_name": "addAll"},
             {"input": "[]\n1", "output": "[]", "testtype": "functional", "func_name": "addAll"}]
    assert code_tests(fenced(method.format("[x + k for x in nums]")), tests) == 1.0
    assert code_tests(fenced(method.format("tuple(x + k for x in nums)")), tests) == 1.0
    assert code_tests(fenced(method.format("[x + k + 1 for x in nums]")), tests) == 0.5  # [] still matches
    assert code_tests(fenced("def addAll(nums, k):\n    return [x + k for x in nums]"), tests) == 1.0
    assert code_tests(fenced("class Solution:\n    pass"), tests) == 0.0  # no such method


def test_layers_as_root():
    layers = available_layers()
    assert "rlimits" in layers
    if os.geteuid() == 0:
        assert {"uid", "netns", "pidns", "mount_view", "own_proc", "disk_quota"} <= set(layers)


def test_environment_is_scrubbed_and_cwd_is_fresh():
    os.environ["R1_SECRET_TOKEN"] = "hunter2"
    try:
        result = run_python("import os\nprint(sorted(os.environ))\nprint(os.getcwd() == os.environ['HOME'])")
    finally:
        del os.environ["R1_SECRET_TOKEN"]
    out = result.stdout.decode()
    assert "R1_SECRET_TOKEN" not in out and out.endswith("True\n")


def test_infinite_loop():
    assert_contained("while True:\n    pass\nprint(3)", timeout_s=1.0, budget_s=5.0)


def test_sleep_forever_hits_wall_limit():
    result = run_python("import time\ntime.sleep(3600)", config=SandboxConfig(wall_s=0.5))
    assert result.timed_out and result.wall_s < 3.0


def test_fork_bomb():
    assert_contained("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\nprint(3)")


def test_setsid_grandchild_is_killed():
    code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(600)\n"
            "    os._exit(0)\ntime.sleep(0.2)\nprint(3)")
    result = run_python(code, config=SandboxConfig(wall_s=5.0))
    assert result.stdout == b"3\n"
    if "uid" in result.layers:
        assert processes_of(sandbox_uid()) == []


def test_allocate_50_gb():
    assert_contained("x = bytearray(50 * 2**30)\nx[-1] = 1\nprint(3)")


def test_open_socket():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        assert_contained(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint(3)")
        assert_contained("import socket\nsocket.getaddrinfo('example.com', 80)\nprint(3)")
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_write_to_home_and_root(tmp_path):
    home = os.path.expanduser("~")
    targets = [os.path.join(home, "r1_sandbox_escape.txt"), "/r1_sandbox_escape.txt"]
    if {"readonly_fs", "mount_view"} & set(available_layers()):
        targets += ["/dev/shm/r1_sandbox_escape.txt", str(tmp_path / "escape.txt")]
    for target in targets:
        assert_contained(f"open({target!r}, 'w').write('x')\nprint(3)")
        assert not os.path.exists(target), target
    # the program's /tmp is its own scratch (in its own view) or read-only: the host's /tmp is never written
    run_python("open('/tmp/r1_sandbox_escape.txt', 'w').write('x')")
    assert not os.path.exists("/tmp/r1_sandbox_escape.txt")
    # the sandbox's own ~ is its fresh temp dir: writing there works and is gone afterwards
    result = run_python("import os\np = os.path.expanduser('~/note.txt')\nopen(p, 'w').write('x')\nprint(p)")
    assert result.exit_code == 0 and not os.path.exists(result.stdout.decode().strip())


def test_kill_parent():
    """Signals aimed at this process, its group, its parent pid or everyone (-1) must reach none of them."""
    me = os.getpid()
    assert_contained(f"import os, signal\nos.kill({me}, signal.SIGKILL)\nprint(3)")
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        for attack in ("os.kill(os.getppid(), signal.SIGKILL)", "os.kill(-1, signal.SIGKILL)",
                       f"os.killpg(os.getpgid({me}), signal.SIGKILL)", f"os.kill({bystander.pid}, signal.SIGKILL)"):
            run_python(f"import os, signal\ntry:\n    {attack}\nexcept OSError:\n    pass\nprint('ran')")
            assert bystander.poll() is None, attack
    finally:
        bystander.kill()
        bystander.wait()


def test_print_100_mb():
    code = "import sys\nprint(3)\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)"
    assert_contained(code)
    result = run_python(code, config=SandboxConfig(max_output_bytes=1 << 16))
    assert len(result.stdout) <= 1 << 16 and result.output_truncated and result.exit_code != 0


def test_fallback_layers_without_namespaces_or_uid():
    """What the audit hook alone still stops (forced on, as if running unprivileged without namespaces)."""
    weak = SandboxConfig(wall_s=2.0, namespaces=False, drop_privileges=False, cgroups=False)
    assert run_python("pass", config=weak).layers == ("rlimits", "audit_hook")
    for code in ("import socket\nsocket.socket()\nprint(3)",
                 "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint(3)",
                 "import ctypes\nctypes.CDLL(None).kill(-1, 9)\nprint(3)"):
        assert code_tests(fenced(code), [{"input": "", "output": "3"}], config=weak, timeout_s=2.0) == 0.0
