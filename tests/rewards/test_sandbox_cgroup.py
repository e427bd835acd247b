"""Where the sandbox's per-run cgroups go, on cgroup v2, v1 and neither, read from fake /proc files and trees (the
kernel's side, the OOM killer acting on a real limit, is tested in tests/adversarial/test_sandbox_isolation.py on
machines that have a writable hierarchy)."""
import os

import pytest

from r1_megatron.rewards import sandbox_cgroup
from r1_megatron.rewards.sandbox_cgroup import SandboxCgroup, hierarchies


def _fake_proc(monkeypatch, tmp_path, mountinfo: str, cgroup: str) -> None:
    (tmp_path / "mountinfo").write_text(mountinfo)
    (tmp_path / "cgroup").write_text(cgroup)
    monkeypatch.setattr(sandbox_cgroup, "MOUNTINFO", str(tmp_path / "mountinfo"))
    monkeypatch.setattr(sandbox_cgroup, "SELF_CGROUP", str(tmp_path / "cgroup"))


def test_cgroup_v2_with_delegated_controllers(monkeypatch, tmp_path):
    base = tmp_path / "unified" / "user.slice" / "job"
    base.mkdir(parents=True)
    (base / "cgroup.subtree_control").write_text("cpu memory pids\n")
    _fake_proc(monkeypatch, tmp_path, f"30 23 0:27 / {tmp_path / 'unified'} rw,relatime - cgroup2 cgroup2 rw\n",
               "0::/user.slice/job\n")
    [hierarchy] = hierarchies()
    assert (hierarchy.version, hierarchy.base) == (2, str(base))
    cgroup = SandboxCgroup.create(256 << 20, 18, pid=77)
    [(_, path)] = cgroup.dirs
    assert os.path.basename(path).startswith("r1-sandbox-77-") and cgroup.controllers == ("memory", "pids")
    assert open(os.path.join(path, "memory.max")).read() == str(256 << 20)
    assert open(os.path.join(path, "pids.max")).read() == "18"
    assert cgroup.procs_files == [os.path.join(path, "cgroup.procs")]
    assert not cgroup.memory_exceeded()
    with open(os.path.join(path, "memory.events"), "w") as f:
        f.write("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cgroup.memory_exceeded()


def test_cgroup_v2_without_delegation_falls_back_to_v1(monkeypatch, tmp_path):
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.subtree_control").write_text("")  # nothing delegated (as on this CI machine)
    memory, pids = tmp_path / "memory" / "docker" / "abc", tmp_path / "pids"
    memory.mkdir(parents=True)
    pids.mkdir()
    _fake_proc(monkeypatch, tmp_path,
               f"30 23 0:27 / {tmp_path / 'unified'} rw - cgroup2 cgroup2 rw\n"
               f"31 23 0:28 / {tmp_path / 'memory'} rw - cgroup cgroup rw,memory\n"
               f"32 23 0:29 / {pids} rw - cgroup cgroup rw,pids\n",
               "0::/\n8:pids:/\n4:memory:/docker/abc\n")
    assert sorted((h.version, h.controller, h.base) for h in hierarchies()) == [
        (1, "memory", str(memory)), (1, "pids", str(pids))]
    cgroup = SandboxCgroup.create(128 << 20, 10, pid=5)
    assert cgroup.controllers == ("memory", "pids")
    paths = dict((h.controller, p) for h, p in cgroup.dirs)
    assert open(os.path.join(paths["memory"], "memory.limit_in_bytes")).read() == str(128 << 20)
    assert open(os.path.join(paths["pids"], "pids.max")).read() == "10"
    with open(os.path.join(paths["memory"], "memory.oom_control"), "w") as f:
        f.write("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert cgroup.memory_exceeded()


@pytest.mark.parametrize("mountinfo", ["", "31 23 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"])
def test_no_writable_hierarchy_means_no_cgroup(monkeypatch, tmp_path, mountinfo):
    """No cgroup mount, or one this process cannot write to (its path is not there): the rlimit fallback."""
    _fake_proc(monkeypatch, tmp_path, mountinfo, "4:memory:/not/here\n")
    assert hierarchies() == [] and SandboxCgroup.create(1 << 30, 16) is None
