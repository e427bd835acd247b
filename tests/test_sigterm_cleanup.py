"""A SIGTERM to pytest (a cancelled CI job) still ends the process groups the tests started (tests/conftest.py):
the `with ProcessGroup(...)` of a running test unwinds and kills its child, which lives in its own session."""
import os
import signal
import subprocess
import sys
import time

from tests.parallel.launch import ROOT

INNER = '''
import time
from tests.parallel.launch import ProcessGroup, worker_env

def test_holds_a_child(tmp_path):
    with ProcessGroup(["sleep", "300"], worker_env(), capture=False) as proc:
        (tmp_path.parent / "child.pid").write_text(str(proc.pid))
        time.sleep(300)
'''


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_to_pytest_kills_the_childs_process_group(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER)
    basetemp = tmp_path / "base"
    # the suite's conftest loaded as a plugin: the inner test file lives outside tests/
    pytest = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                               f"--basetemp={basetemp}", str(tmp_path / "test_inner.py")],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    pid_file = basetemp / "child.pid"
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and pytest.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pid_file.exists(), f"the inner test never started its child (pytest exit code {pytest.poll()})"
        child = int(pid_file.read_text())
        assert _alive(child)
        pytest.send_signal(signal.SIGTERM)
        pytest.wait(timeout=30)
        assert not _alive(child)
    finally:  # a failing check must not leave either behind
        for pid in (pytest.pid, int(pid_file.read_text()) if pid_file.exists() else None):
            if pid is not None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        pytest.wait()
