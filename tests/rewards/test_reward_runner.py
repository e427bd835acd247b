"""The reward runner: weighted scores, hung and crashed workers, and the wall-time bound."""
import glob
import os
import tempfile
import time

import pytest

from r1_megatron.rewards import RewardConfig, RewardRunner, format_reward, math_accuracy
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
    config = RewardConfig(weights={"math_accuracy": 1.0, "format": 0.5, "test_misbehave": 1.0}, num_workers=2,
                          spare_workers=2, timeout_s=TIMEOUT_S, plugin_modules=(PLUGIN,))
    with RewardRunner(config) as r:
        yield r


def test_scores_match_direct_calls(runner):
    completions, samples = mixed_batch(30)
    batch = runner.score(completions, samples)
    assert batch.failure == [None] * 30
    assert batch.total == [expected_total(c, s) for c, s in zip(completions, samples)]
    assert batch.per_reward["format"] == [format_reward(c) for c in completions]
    assert batch.metrics()["reward/timeouts"] == 0.0


def test_thousand_completions_with_one_in_ten_hanging(runner):
    completions, samples = mixed_batch(1000, hang_every=10)
    hung = [i for i, c in enumerate(completions) if "HANG" in c]
    normal = [i for i in range(1000) if i not in set(hung)]
    start = time.monotonic()
    runner.score([completions[i] for i in normal], [samples[i] for i in normal])
    normal_work_s = time.monotonic() - start

    start = time.monotonic()
    batch = runner.score(completions, samples)
    wall_s = time.monotonic() - start
    assert len(hung) == 100 and len(batch.total) == len(batch.failure) == 1000
    timed_out = {i for i, f in enumerate(batch.failure) if f == "timeout"}
    # The timeout is tiny on purpose; on a starved shared CI core a normal sample may, rarely, miss it too.
    spurious = timed_out - set(hung)
    assert set(hung) <= timed_out and len(spurious) <= 10, sorted(spurious)
    assert batch.metrics()["reward/timeouts"] == len(timed_out)
    assert all(batch.total[i] == 0.0 for i in hung)
    checked = [i for i in normal[::37] if i not in spurious]
    assert all(batch.total[i] == expected_total(completions[i], samples[i]) for i in checked)
    # each hung sample holds one of the 2 workers for one timeout; replacing a worker is a fork
    bound_s = len(hung) * TIMEOUT_S / 2 + normal_work_s + len(hung) * 0.1 + 5.0
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
    assert batch.errors[3] == f"{names}: timed out after 0.5 s (the worker was killed)"


def test_missing_sample_field_is_an_error_not_a_hang(runner):
    batch = runner.score(["\\boxed{1}"], [{"question": "no answer field"}])
    assert batch.failure == ["error"] and batch.per_reward["math_accuracy"] == [0.0]


def test_killed_worker_takes_its_sandboxed_programs_along():
    code = "```python\nimport time\ntime.sleep(60)\nprint(1)\n```"
    config = RewardConfig(weights={"code_tests": 1.0}, reward_kwargs={"code_tests": {"timeout_s": 30.0}},
                          num_workers=1, timeout_s=1.5)
    with RewardRunner(config) as r:
        pid = r._workers[0].process.pid
        start = time.monotonic()
        batch = r.score([code], [{"tests": [{"input": "", "output": "1"}]}])
        assert time.monotonic() - start < 5.0
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
