"""Kills: a SIGKILLed run leaves no process and no temp directory behind, and a run SIGKILLed five times at random
moments and resumed each time ends with the weights of an uninterrupted run, bit for bit.

Only the main process is killed (`kill -9 PID`, not the process group): its children get no signal, so each must
end by itself (r1_megatron/child_processes.py). A process of a run is one in the run's session (each run is
started in its own) or one whose environment carries the run's marker; zombies are dead and not counted.
"""
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r1_megatron import child_processes, warning_filters
from tests.grpo.test_cli import TINY
from tests.parallel.launch import worker_env

MARKER = "R1_KILL_TEST_RUN"
# a checkpoint every step, no evaluation (what the kills hit is the training loop and its saves); a step and its
# save take ~0.5 s on 2 cores, a start a few seconds
RUN = [a for a in TINY if not a.startswith("checkpoint.every_steps=")] + [
    "checkpoint.every_steps=1", "evaluation.every_steps=0"]
STEPS = 16


@pytest.fixture
def short_tmp():
    """A temp directory with a short path: multiprocessing's sockets live under TMPDIR, and AF_UNIX paths are
    limited to ~107 characters, which pytest's tmp_path nearly fills."""
    path = Path(tempfile.mkdtemp(prefix="r1k-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _processes():
    """(pid, ppid, session id, environment entries, command) of every live process; zombies are dead."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid, _pgrp, sid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:4]
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        if state != "Z":
            yield int(entry.name), int(ppid), int(sid), environ, cmd


def _run_processes(session: int, marker: str) -> dict[int, str]:
    """{pid: command} of every live process in `session` or with `marker` (NAME=VALUE) in its environment."""
    return {pid: cmd[:160] for pid, _, sid, environ, cmd in _processes()
            if sid == session or marker.encode() in environ}


def _assert_all_gone(session: int, marker: str, grace_s: float = 10.0) -> None:
    """The children end by themselves within a second; the grace is for a loaded machine."""
    deadline = time.monotonic() + grace_s
    while (alive := _run_processes(session, marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"processes of the killed run still alive {grace_s} s after the kill:\n" + "\n".join(
        f"{pid} {cmd}" for pid, cmd in alive.items())


def _complete_steps(checkpoints: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("step_")) for p in checkpoints.glob("step_*") if p.is_dir())


def _partial_steps(checkpoints: Path) -> list[int]:
    return [int(p.name.rsplit("_", 1)[1]) for p in checkpoints.glob(".partial-step_*")]


def _mp_temp_dirs(tmp: Path) -> set[Path]:
    return {p for p in tmp.iterdir() if p.name.startswith((child_processes.TEMP_PREFIX, "pymp-"))}


def _grpo(*args: str) -> list[str]:
    return [sys.executable, "-m", "r1_megatron", "train", "grpo", *args]


class _Attempt:
    """One start of a run in its own session, its temp directory `tmp`, output in the file `log`; its processes
    carry MARKER=`tag` in their environment."""

    def __init__(self, cmd: list[str], tmp: Path, log: Path, tag: str, pythonpath: Path | None = None):
        self.marker, self.tmp, self.log = "{tag}", tmp, log
        env = {**worker_env(), "TMPDIR": str(tmp), MARKER: tag, "PYTHONUNBUFFERED": "1"}
        if pythonpath:
            env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env['PYTHONPATH']}"
        with log.open("w") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.own_dir_seen = False

    def own_temp_dirs(self) -> set[Path]:
        return set(self.tmp.glob(f"{child_processes.TEMP_PREFIX}{self.proc.pid}-*"))

    def wait_until(self, condition, dead_dirs: set[Path], timeout_s: float = 240) -> None:
        """Poll `condition()` while the run lives; the first time this run's own temp directory shows up (its
        start-up sweep has run), none of the dead runs' directories may be left."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.own_dir_seen and self.own_temp_dirs():
                self.own_dir_seen = True
                assert not {d for d in dead_dirs if d.exists()}, "a killed run's temp directory survived the sweep"
            if condition():
                return
            assert self.proc.poll() is None, f"the run ended (code {self.proc.returncode}):\n" + \
                self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)

    def kill(self) -> set[Path]:
        """SIGKILL the main process only; assert that nothing of the run lives on; return its temp dirs."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        _assert_all_gone(self.proc.pid, self.marker)
        left = _mp_temp_dirs(self.tmp)
        # the only multiprocessing temp directories are the dead runs' own: named for their owner, swept later
        assert all(p.name.startswith(child_processes.TEMP_PREFIX) for p in left), left
        return self.own_temp_dirs()

    def cleanup(self) -> None:
        """Whatever the test's outcome, nothing it started stays: the session, and what left it."""
        for pid in _run_processes(self.proc.pid, self.marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


def test_kill_9_five_times_at_random_moments_resumes_bit_identically_and_leaves_nothing(tmp_path, short_tmp):
    """The kill moments (seeded) are of three kinds, each drawn anew; each bounds the attempt's progress in steps,
    not seconds, so that on any machine five kills land before the run's end:
    - after a checkpoint: once the attempt has written 1, 2 or 3 (uniform) checkpoints newer than the one it
      resumed from, a delay uniform in [0, 0.5] s, cut short by the next checkpoint (so: in the next step or
      its save);
    - in start-up: once the attempt's runtime is up (its own temp directory exists), a delay uniform in [0, 2] s,
      cut short by its first new checkpoint (model build, restore, reward workers' start, or the first step);
    - mid-save: as soon as this attempt's partial checkpoint of a new step shows up, a delay uniform in
      [0, 0.2] s.
    The first kill is after a checkpoint (a fresh run killed before its first checkpoint but after logging a step
    is refused on resume by design: docs/launching.md), and the kinds alternate so every kind occurs. The five
    attempts make at most 3 + 1 + 1 + 1 + 3 new checkpoints, plus one for each kill that falls between a save's
    end and the next step, so the sixth start still has steps to do."""
    rng = random.Random(15)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    (short_tmp / "whole").mkdir()
    (tmp := short_tmp / "killed").mkdir()
    # the uninterrupted run, in parallel with the killed one (one thread each; both are deterministic on CPU)
    reference = _Attempt(_grpo(f"run_dir={whole}", f"steps={STEPS}", *RUN), short_tmp / "whole",
                         tmp_path / "whole.log", "whole")
    attempts, dead_dirs = [reference], set()
    checkpoints = killed / "checkpoints"

    def newest() -> int:
        return max(_complete_steps(checkpoints), default=0)

    try:
        for k, kind in enumerate(["after a checkpoint", "in start-up", "mid-save", "in start-up",
                                  "after a checkpoint"]):
            done = newest()
            args = [f"run_dir={killed}", f"steps={STEPS}", *RUN] if k == 0 else ["--resume", str(killed)]
            attempt = _Attempt(_grpo(*args), tmp, tmp_path / f"attempt{k}.log", f"attempt{k}")
            attempts.append(attempt)
            if kind == "after a checkpoint":
                target = done + rng.randint(1, 3)
                attempt.wait_until(lambda: newest() >= target, dead_dirs)
                kill_at = time.monotonic() + rng.uniform(0, 0.5)
                attempt.wait_until(lambda: time.monotonic() > kill_at or newest() > target, dead_dirs)
            elif kind == "mid-save":  # a save of this attempt's, not one a killed attempt left partial
                floor = max([done, *_partial_steps(checkpoints)])
                attempt.wait_until(lambda: max(_partial_steps(checkpoints), default=0) > floor, dead_dirs)
                time.sleep(rng.uniform(0, 0.2))
            else:
                attempt.wait_until(lambda: attempt.own_dir_seen, dead_dirs)
                kill_at = time.monotonic() + rng.uniform(0, 2)
                attempt.wait_until(lambda: time.monotonic() > kill_at or newest() > done, dead_dirs)
            assert attempt.proc.poll() is None, f"attempt {k} ended before its kill"
            left = attempt.kill()
            assert len(left) == 1  # what the next start's sweep must remove
            dead_dirs |= left
        final = _Attempt(_grpo("--resume", str(killed)), tmp, tmp_path / "final.log", "final")
        attempts.append(final)
        for run in (final, reference):
            assert run.proc.wait(timeout=300) == 0, run.log.read_text()[-3000:]
            _assert_all_gone(run.proc.pid, run.marker)
            assert not _mp_temp_dirs(run.tmp)  # the last start swept the dead runs' dirs, its own went at exit
    finally:
        for attempt in attempts:
            attempt.cleanup()
    assert "resumed from" in final.log.read_text()
    want, got = load_file(whole / "hf" / "model.safetensors"), load_file(killed / "hf" / "model.safetensors")
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


HANGING_REWARD = '''
import pathlib, time
from r1_megatron.rewards.registry import register_reward

@register_reward("hangs")
def hangs(completion, sample, **kwargs):
    pathlib.Path(sample["started"]).touch()
    time.sleep(600)  # a sample no reward should take: only the dead trainer's deadline would have ended it
    return 0.0
'''

TRAINER = '''
import multiprocessing, sys, time
from r1_megatron import child_processes
from r1_megatron.rewards.runner import RewardConfig, RewardRunner

if __name__ == "__main__":  # not again in the workers, which import this file as their main module
    child_processes.install()  # what runtime.init_distributed does first
    # like Megatron's per-save file writers: forked from the main thread
    multiprocessing.get_context("fork").Process(target=time.sleep, args=(600,)).start()
    config = RewardConfig(weights={"hangs": 1.0}, plugin_modules=("hanging_reward",), num_workers=1,
                          spare_workers=0, timeout_s=600)
    RewardRunner(config).score(["x"], [{"started": sys.argv[1]}])
'''

# what torchrun's agent does with a rank (torch.distributed.elastic's SubprocessHandler), and nothing more
AGENT = '''
import os, subprocess, sys
env = {**os.environ, "TORCHELASTIC_RUN_ID": "kill-test"}
sys.exit(subprocess.Popen([sys.executable, *sys.argv[1:]], env=env, start_new_session=True).wait())
'''


def test_killing_torchrun_ends_its_rank_and_the_ranks_hung_reward_worker_and_forked_child(tmp_path, short_tmp):
    """Attack: torchrun's agent is SIGKILLed while its rank's reward worker is stuck in a sample (a
    pathological sympy expression) and a child forked by the rank is busy. The rank, in a session of its own,
    would train on unsupervised; killed in turn, it takes its per-sample deadline with it. All must end."""
    for name, text in [("hanging_reward.py", HANGING_REWARD), ("trainer.py", TRAINER), ("agent.py", AGENT)]:
        (tmp_path / name).write_text(text)
    started = tmp_path / "started"
    agent = _Attempt([sys.executable, str(tmp_path / "agent.py"), str(tmp_path / "trainer.py"), str(started)],
                     short_tmp, tmp_path / "trainer.log", "hung", pythonpath=tmp_path)
    try:
        agent.wait_until(started.exists, dead_dirs=set(), timeout_s=120)
        agent.kill()
    finally:
        agent.cleanup()


def test_a_checkpoint_save_starts_no_process(tmp_path):
    """Megatron's writer collected its results in a spawned Manager (~270 MB, never stopped, orphaned by a
    kill); after runtime start-up a save runs in this process and starts nothing that outlives it."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    from r1_megatron.runtime import init_distributed

    init_distributed()

    def children():
        return {pid for pid, ppid, *_ in _processes() if ppid == os.getpid()}

    before = children()
    dist_checkpointing.save({"w": ShardedTensor.from_rank_offsets("w", torch.arange(6.0), replica_id=0)},
                            str(tmp_path))
    assert isinstance(filesystem_async._results_queue, queue.Queue)
    assert children() <= before
    with warning_filters.checkpoint_load():
        loaded = dist_checkpointing.load({"w": ShardedTensor.from_rank_offsets("w", torch.zeros(6), replica_id=0)},
                                         str(tmp_path))
    assert torch.equal(loaded["w"], torch.arange(6.0))  # the results came through the in-process queue


def test_temp_dirs_are_swept_only_when_their_owner_is_gone(tmp_path):
    """A dead owner's directory goes (also when its pid now belongs to another process: the start time differs);
    a live owner's, and anything not named by this module (pymp-*, other files), stay."""
    pid = os.getpid()
    start = child_processes._start_time(pid)
    dead_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # never a process
    names = {"live": f"r1mp-{pid}-{start}-abc", "reused pid": f"r1mp-{pid}-{start}0-abc",
             "dead": f"r1mp-{dead_pid}-{start}-abc", "foreign": "pymp-abc", "odd": "r1mp-x-y",
             "odder": f"r1mp-{dead_pid}"}
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "listener-1").touch()
    removed = child_processes.sweep_dead_temp_dirs(tmp_path)
    assert {p.name for p in removed} == {names["reused pid"], names["dead"]}
    assert {p.name for p in tmp_path.iterdir()} == {names[k] for k in ("live", "foreign", "odd", "odder")}


def test_the_temp_dir_is_named_for_its_owner_unless_its_sockets_would_not_fit(tmp_path, monkeypatch):
    """Bad input: a TMPDIR so long that the owner's name would push the forkserver's socket path past AF_UNIX's
    limit: multiprocessing's own choice is kept (the run works; only the sweep does not know that directory)."""
    from multiprocessing import process

    config = process.current_process()._config
    monkeypatch.setitem(config, "tempdir", None)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / ("x" * child_processes.MAX_SOCKET_PATH)))
    child_processes._use_owned_temp_dir()
    assert config["tempdir"] is None
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    child_processes._use_owned_temp_dir()
    owned = Path(config["tempdir"])
    assert owned.parent == tmp_path and owned.is_dir() and child_processes.owner_alive(owned.name)
    assert owned.name.startswith(f"r1mp-{os.getpid()}-{child_processes._start_time(os.getpid())}-")
