"""The reward runner: weighted scores, hung and crashed workers, the limits (CPU, wall, memory) and the
wall-time bound."""
import glob
import os
import tempfile
import time

import pytest

from r1_megatron.rewards import RewardConfig, RewardRunner, format_reward, math_accuracy
from r1_megatron.rewards.runner import process_cpu_s
from r1_megatron.rewards.sandbox import sandbox_uid

PLUGIN = (__name__.rpartition(".")[0] + "." if "." in __name__ else "") + "reward_test_plugins"
TIMEOUT_S = 0.5


def mixed_batch(n, hang_every=None):
    completions, samples = [], []
    for i in range(n):
        if hang_every and i % hang_every == hang_every - 1:
            completions.append(f"<think>HANG {i}</think><answer>1</answer>")
        elif i % 3 == 0:
            completions.append(f"<think>add</think> <answer>\\boxed{{{i}}}</answer>")
        elif i % 3 == 1:
            completions.append(f"The answer is \\boxed{{\\frac{{{2 * i}}}{{2}}}}")
        else:
            completions.append(f"<think>hmm</think><answer>{i + 1}</answer>")
        samples.append({"answer": str(i)})
    return completions, samples


def expected_total(completion, sample):
    return math_accuracy(completion, sample["answer"]) + 0.5 * format_reward(completion) + (len(completion) % 2)


@pytest.fixture(scope="module")
def runner():
    """HANG sleeps, so the wall backstop stops it: as short as the CPU limit here, to keep the hanging tests
    short (a HANG costs two of them, with its retry)."""
    config = RewardConfig(weights={"math_accuracy": 1.0, "format": 0.5, "test_misbehave": 1.0}, num_workers=2,
                          spare_workers=2, timeout_s=TIMEOUT_S, wall_timeout_s=TIMEOUT_S, plugin_modules=(PLUGIN,))
    with RewardRunner(config) as r:
        yield r


def test_scores_match_direct_calls(runner):
    completions, samples = mixed_batch(30)
    batch = runner.score(completions, samples)
    assert batch.failure == [None] * 30
    assert batch.total == [expected_total(c, s) for c, s in zip(completions, samples)]
    assert batch.per_reward["format"] == [format_reward(c) for c in completions]
    assert batch.metrics()["reward/timeouts"] == 0.0


def test_thousand_completions_with_one_in_forty_hanging(runner):
    completions, samples = mixed_batch(1000, hang_every=40)
    hung = [i for i, c in enumerate(completions) if "HANG" in c]
    normal = [i for i in range(1000) if i not in set(hung)]
    start = time.monotonic()
    runner.score([completions[i] for i in normal], [samples[i] for i in normal])
    normal_work_s = time.monotonic() - start

    start = time.monotonic()
    batch = runner.score(completions, samples)
    wall_s = time.monotonic() - start
    assert len(hung) == 25 and len(batch.total) == len(batch.failure) == 1000
    # A normal sample uses milliseconds of CPU time, so a starved CI core cannot make it time out (at worst it
    # reaches the wall backstop once and is retried).
    assert {i for i, f in enumerate(batch.failure) if f == "timeout"} == set(hung)
    assert batch.failure.count(None) == len(normal)
    assert batch.metrics()["reward/timeouts"] == len(hung) and batch.retries >= len(hung)
    assert all(batch.total[i] == 0.0 for i in hung)
    assert all(batch.total[i] == expected_total(completions[i], samples[i]) for i in normal[::37])
    # each hung sample holds one of the 2 workers for two wall backstops; replacing a worker is a fork
    bound_s = len(hung) * 2 * TIMEOUT_S / 2 + normal_work_s + len(hung) * 2 * 0.1 + 5.0
    assert wall_s < bound_s, (wall_s, bound_s, normal_work_s)


def test_crash_and_raise_are_counted(runner):
    completions = ["\\boxed{1}", "CRASH", "RAISE \\boxed{1}", "\\boxed{2}"]
    samples = [{"answer": "1"}] * 4
    batch = runner.score(completions, samples)
    assert batch.failure == [None, "crash", "error", None]
    assert batch.total[1] == 0.0
    assert batch.per_reward["math_accuracy"] == [1.0, 0.0, 1.0, 0.0]  # a raising reward spares the others
    assert batch.metrics()["reward/crashes"] == 1.0 and batch.metrics()["reward/errors"] == 1.0
    assert runner.score(["\\boxed{1}"], [{"answer": "1"}]).total == [1.0 + 1.0]  # replaced worker works


def test_failed_samples_keep_what_happened(runner):
    """The worker's error text reaches the batch (first line: reward, exception type, message), and timeouts
    and crashes say so; a run quotes the first line when it stops."""
    batch = runner.score(["\\boxed{1}", "RAISE", "CRASH", "HANG"], [{"answer": "1"}] * 4)
    assert batch.failure == [None, "error", "crash", "timeout"]
    assert batch.errors[0] is None
    first_line, _, traceback = batch.errors[1].partition("\n")
    assert first_line == "test_misbehave: RuntimeError: reward bug"
    assert "Traceback" in traceback and 'raise RuntimeError("reward bug")' in traceback
    names = "math_accuracy, format, test_misbehave"
    assert batch.errors[2] == f"{names}: the reward worker died (exit code 3)"
    assert batch.errors[3] == (f"{names}: timed out: ran 0.5 s of wall time without using 0.5 s of CPU time, "
                               f"twice (the worker was killed)")


def test_missing_sample_field_is_an_error_not_a_hang(runner):
    batch = runner.score(["\\boxed{1}"], [{"question": "no answer field"}])
    assert batch.failure == ["error"] and batch.per_reward["math_accuracy"] == [0.0]


def test_killed_worker_takes_its_sandboxed_programs_along():
    code = "```python\nimport time\ntime.sleep(60)\nprint(1)\n```"
    # the program sleeps: no CPU time, so the wall backstop stops it, twice (the retry)
    config = RewardConfig(weights={"code_tests": 1.0}, reward_kwargs={"code_tests": {"timeout_s": 30.0}},
                          num_workers=1, timeout_s=1.5, wall_timeout_s=1.5)
    with RewardRunner(config) as r:
        pid = r._workers[0].process.pid
        start = time.monotonic()
        batch = r.score([code], [{"tests": [{"input": "", "output": "1"}]}])
        assert time.monotonic() - start < 2 * 1.5 + 5.0
        assert batch.failure == ["timeout"]
    deadline = time.monotonic() + 10  # the replacement worker cleans up while starting; close() waited for it
    while glob.glob(f"{tempfile.gettempdir()}/r1_sandbox_{pid}_*") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not glob.glob(f"{tempfile.gettempdir()}/r1_sandbox_{pid}_*")
    uid = sandbox_uid(pid)
    if uid is not None:
        assert not [p for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == uid and _state(p) != "Z"]


def _uid_of(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except OSError:
        return "Z"


def test_r1_preset_and_validation():
    assert dict(RewardConfig.r1().weights) == {"math_accuracy": 1.0, "format": 1.0}
    lc = RewardConfig.r1(language_consistency_weight=0.5, target_language="zh")
    assert lc.weights["language_consistency"] == 0.5 and lc.reward_kwargs["language_consistency"] == {
        "target_language": "zh"}
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        RewardConfig(weights={"nope": 1.0})
    with pytest.raises(ValueError, match="num_workers"):
        RewardConfig(num_workers=0)
    with pytest.raises(ValueError, match="fork"):
        RewardConfig(start_method="fork")
    with pytest.raises(ValueError, match="'format'"):
        RewardConfig(weights={"math_accuracy": 1.0}, reward_kwargs={"format": {}})
    with pytest.raises(ValueError, match="finite"):
        RewardConfig(weights={"format": float("nan")})



@pytest.mark.parametrize("field", ["timeout_s", "startup_timeout_s", "wall_timeout_s"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0.0, -1.0])
def test_a_limit_cannot_be_switched_off(field, value):
    with pytest.raises(ValueError, match=f"RewardConfig.{field} must be a finite number of seconds > 0, got"):
        RewardConfig(**{field: value})


def test_the_wall_backstop_and_memory_limit_are_checked():
    assert RewardConfig(timeout_s=4.0).wall_limit_s == 12.0 and RewardConfig(wall_timeout_s=17.0).wall_limit_s == 17.0
    with pytest.raises(ValueError, match="wall_timeout_s must be >= timeout_s=10.0"):
        RewardConfig(wall_timeout_s=5.0)
    for bad in (0, -1, float("inf"), 1.5e9):
        with pytest.raises(ValueError, match="RewardConfig.worker_memory_bytes must be a whole number of bytes"):
            RewardConfig(worker_memory_bytes=bad)


def test_workers_run_under_the_memory_limit(runner):
    with open(f"/proc/{runner._workers[0].process.pid}/limits") as f:
        line = next(line for line in f if line.startswith("Max address space"))
    assert line.split()[3] == str(4 << 30)  # the default worker_memory_bytes, soft limit


def test_process_cpu_s_reads_what_os_times_sums():
    """The runner reads a worker's CPU time from /proc; the worker stamps its own with os.times(): one clock."""
    burn_until = time.process_time() + 0.05
    while time.process_time() < burn_until:
        pass
    inside, outside = sum(os.times()[:4]), process_cpu_s(os.getpid())
    assert inside >= 0.05 and inside - 1e-9 <= outside <= inside + 0.02  # both in clock ticks, summed as floats
    assert process_cpu_s(2 ** 22 + 1) is None  # no such process (above the kernel's pid_max)
