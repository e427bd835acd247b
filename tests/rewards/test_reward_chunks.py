"""The reward runner sends samples in chunks: a hang or a crash in the middle of a chunk fails that sample
alone, the chunk's other samples are scored (reported before the kill, or sent again), and the edges
(0 samples, more workers than samples, huge completions, Ctrl-C in a chunk) hold."""
import collections
import signal
import time
from pathlib import Path

import pytest

from r1_megatron.rewards import RewardConfig, RewardRunner, format_reward
from r1_megatron.rewards import runner as runner_module
from r1_megatron.rewards.runner import CHUNK_CHARS, next_chunk

PLUGIN = (__name__.rpartition(".")[0] + "." if "." in __name__ else "") + "reward_test_plugins"
TIMEOUT_S = 0.5


def config(**kwargs):
    return RewardConfig(weights={"format": 1.0, "test_misbehave": 1.0}, timeout_s=TIMEOUT_S,
                        plugin_modules=(PLUGIN,), **kwargs)


def expected_total(completion):
    return format_reward(completion) + len(completion) % 2


@pytest.fixture(scope="module")
def one_worker():
    """A wall backstop far above the CPU limit: SPIN is a CPU timeout even when a loaded CI core gives the
    worker an eighth of its time."""
    with RewardRunner(config(num_workers=1, spare_workers=1, chunk_size=8, wall_timeout_s=8 * TIMEOUT_S)) as r:
        yield r


@pytest.fixture
def sent_chunks(monkeypatch):
    """Every chunk the runner sends, as lists of sample indices."""
    chunks, send = [], runner_module._Worker.send_chunk

    def recording(worker, chunk, completions, samples):
        send(worker, chunk, completions, samples)
        chunks.append(list(chunk))

    monkeypatch.setattr(runner_module._Worker, "send_chunk", recording)
    return chunks


def runs(log: Path) -> dict[int, list[int]]:
    """sample index -> pids of the workers that scored it, in order."""
    out = collections.defaultdict(list)
    for line in log.read_text().splitlines():
        pid, completion = line.split(" ", 1)
        out[int(completion.rsplit(" ", 1)[1])].append(int(pid))
    return out


@pytest.mark.parametrize("marker, kind, metric", [("SPIN", "timeout", "reward/timeouts"),
                                                  ("CRASH", "crash", "reward/crashes")])
def test_a_failure_mid_chunk_fails_that_sample_alone(one_worker, sent_chunks, tmp_path, marker, kind, metric):
    # 12 samples, 1 worker: the first chunk is 0-5. SLOW (0.2 s > FLUSH_S) makes the worker report 0-1 before
    # the failure at 3; 2 ran unreported and 4-5 never started in the killed worker.
    labels = ["<think>a</think><answer>b</answer>", "SLOW", "fast", marker] + ["fast"] * 8
    completions = [f"{label} {i}" for i, label in enumerate(labels)]
    log = tmp_path / "log"
    batch = one_worker.score(completions, [{"log": str(log)}] * 12)
    assert sent_chunks[0] == [0, 1, 2, 3, 4, 5]
    assert batch.failure == [None] * 3 + [kind] + [None] * 8
    assert batch.total == [0.0 if i == 3 else expected_total(c) for i, c in enumerate(completions)]
    assert batch.metrics()[metric] == 1.0
    assert batch.errors[3] == "format, test_misbehave: " + {
        "SPIN": "timed out: used 0.5 s of CPU time (the worker was killed)",
        "CRASH": "the reward worker died (exit code 3)"}[marker]
    ran = runs(log)
    killed = ran[3][0]
    assert ran[0] == ran[1] == [killed]  # reported before the kill: not scored again
    assert ran[3] == [killed] and sum(3 in chunk for chunk in sent_chunks) == 1  # the culprit is not sent again
    assert all(killed not in ran[i] for i in (4, 5))
    # what had not been reported goes again: 4-5, and 2 unless it was reported with 1 (a starved worker)
    sent_again = {i for i in range(12) if sum(i in chunk for chunk in sent_chunks) > 1}
    assert {4, 5} <= sent_again <= {2, 4, 5}
    assert ran[2][0] == killed and len(ran[2]) == 1 + (2 in sent_again)


def test_a_waiting_sample_is_retried_once_on_another_worker_then_times_out(sent_chunks, tmp_path):
    """HANG sleeps: it uses no CPU, so the wall backstop stops it; the first time it may have been starved and
    goes to the back of the queue (counted), the second time it is a timeout. The others are scored once (SLOW
    is reported before the kill)."""
    log = tmp_path / "log"
    completions = [f"{label} {i}" for i, label in enumerate(["SLOW", "HANG", "fast", "fast"])]
    with RewardRunner(config(num_workers=1, spare_workers=1, wall_timeout_s=TIMEOUT_S)) as r:
        start = time.monotonic()
        batch = r.score(completions, [{"log": str(log)}] * 4)
        elapsed = time.monotonic() - start
    assert batch.failure == [None, "timeout", None, None]
    assert batch.total == [0.0 if i == 1 else expected_total(c) for i, c in enumerate(completions)]
    assert batch.metrics()["reward/retries"] == 1.0 and batch.metrics()["reward/timeouts"] == 1.0
    assert batch.errors[1] == ("format, test_misbehave: timed out: ran 0.5 s of wall time without using 0.5 s "
                               "of CPU time, twice (the worker was killed)")
    ran = runs(log)
    assert len(ran[1]) == 2 and ran[1][0] != ran[1][1]  # two workers, each killed
    assert [len(ran[i]) for i in (0, 2, 3)] == [1, 1, 1]
    assert sent_chunks[-1] == [1]  # sent last: the back of the queue
    assert elapsed < 2 * TIMEOUT_S + 3.0


def test_the_deadline_is_per_sample_not_per_chunk(one_worker, sent_chunks):
    completions = [f"SLOW {i}" for i in range(8)]  # chunks of 4 x 0.2 s: each sample well within 0.5 s
    batch = one_worker.score(completions, [{}] * 8)
    assert len(sent_chunks[0]) * 0.2 > TIMEOUT_S
    assert batch.failure == [None] * 8
    assert batch.total == [expected_total(c) for c in completions]


def test_every_sample_of_a_chunk_hanging_or_crashing(one_worker):
    completions = [f"{label} {i}" for i, label in enumerate(["SPIN", "CRASH", "SPIN", "RAISE", "fast"])]
    batch = one_worker.score(completions, [{}] * 5)
    assert batch.failure == ["timeout", "crash", "timeout", "error", None]
    assert batch.total == [0.0] * 4 + [expected_total(completions[4])]


def test_zero_samples(one_worker):
    batch = one_worker.score([], [])
    assert (batch.total, batch.failure, batch.errors) == ([], [], [])
    assert batch.per_reward == {"format": [], "test_misbehave": []}
    assert batch.metrics()["reward/total_mean"] == 0.0 and batch.metrics()["reward/timeouts"] == 0.0


@pytest.mark.parametrize("n", [1, 3])
def test_more_workers_than_samples(n, sent_chunks):
    completions = [f"<think>{i}</think><answer>{'x' * i}</answer>" for i in range(n)]
    with RewardRunner(config(num_workers=4, spare_workers=0)) as r:
        batch = r.score(completions, [{}] * n)
        assert r.replacements == 0
    assert sorted(sent_chunks) == [[i] for i in range(n)]  # one each: spread over the workers
    assert batch.failure == [None] * n
    assert batch.total == [expected_total(c) for c in completions]


def test_next_chunk_shrinks_at_the_tail_and_bounds_the_text():
    short = ["x"] * 100
    for left, workers, size, want in [(100, 2, 16, 16), (10, 2, 16, 3), (4, 2, 16, 1), (1, 8, 16, 1),
                                      (100, 1, 5, 5)]:
        pending = collections.deque(range(100 - left, 100))
        assert next_chunk(pending, short, workers, size) == list(range(100 - left, 100 - left + want))
        assert list(pending) == list(range(100 - left + want, 100))
    long = ["y" * (CHUNK_CHARS // 3 + 1)] * 4 + ["z" * (2 * CHUNK_CHARS)]
    pending = collections.deque(range(5))
    assert [next_chunk(pending, long, 1, 16) for _ in range(3)] == [[0, 1], [2, 3], [4]]  # alone, however long
    assert not pending


def test_ctrl_c_in_a_chunk_stops_every_worker():
    """The busy worker sees close()'s stop between two samples instead of finishing its chunk (8 x 0.2 s)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            with RewardRunner(config(num_workers=1, spare_workers=1, chunk_size=8)) as r:
                processes = [w.process for w in r._workers + r._spares]
                signal.setitimer(signal.ITIMER_REAL, 0.3)
                try:
                    r.score([f"SLOW {i}" for i in range(16)], [{}] * 16)
                finally:
                    stopping = time.monotonic()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - stopping < 1.0  # close() kills a worker that is still there after 1 s
    assert all(p.exitcode == 0 for p in processes)  # left by itself, none killed
