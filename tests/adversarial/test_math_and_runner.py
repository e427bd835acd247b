"""Attacks on math_accuracy and the reward runner: completions built to make answer extraction or sympy run away,
rewards that exhaust memory, and a machine too loaded for wall-clock limits. Each case: the attack, then the
outcome asserted (a score of 0.0 within the CPU budget, the good samples next to it scored, the failure counted,
no worker left behind)."""
import gc
import subprocess
import sys
import time

import pytest

from r1_megatron.evaluation.config import EvalRewardsConfig
from r1_megatron.rewards import RewardConfig, RewardRunner, math_accuracy
from r1_megatron.rewards.answer_extraction import SEARCH_CHARS, last_boxed
from r1_megatron.run_config import load_run_config

BOMBS_PLUGIN = (__name__.rpartition(".")[0] + "." if "." in __name__ else "") + "reward_bombs"
MEMORY_BYTES = 512 << 20  # GROW fills it in ~0.2 s of CPU time, well within the 1 s limit
UNCLOSED_BOXED = "\\boxed{" * 8000  # 56 KB: 8.6 s of extraction with timeout_s=1 when extraction was quadratic


def cpu_timed(fn, *args, **kwargs):
    start = time.process_time()
    out = fn(*args, **kwargs)
    return out, time.process_time() - start


def bomb_runner(**kwargs):
    """math_accuracy with a 0.5 s soft limit under a 1 s CPU hard limit, workers limited to 512 MiB. No sample
    here waits, so the wall backstop is set far out of the way of a loaded machine."""
    config = RewardConfig(weights={"math_accuracy": 1.0, "test_bomb": 1.0},
                          reward_kwargs={"math_accuracy": {"timeout_s": 0.5}}, num_workers=2, spare_workers=1,
                          timeout_s=1.0, wall_timeout_s=30.0, worker_memory_bytes=MEMORY_BYTES,
                          plugin_modules=(BOMBS_PLUGIN,), **kwargs)
    return RewardRunner(config)


def test_unclosed_boxed_bomb_scores_zero_within_the_timeout():
    start = time.monotonic()
    score, cpu_s = cpu_timed(math_accuracy, UNCLOSED_BOXED, "1", timeout_s=1.0)
    assert score == 0.0 and cpu_s < 1.0 and time.monotonic() - start < 10.0
    assert math_accuracy(UNCLOSED_BOXED + "\\boxed{42}", "42", timeout_s=1.0) == 1.0  # the box that closes


@pytest.mark.parametrize("unit", ["\\boxed{", "\\fbox {", "\\boxed{}\\boxed{", "\\boxed{{"])
def test_extraction_is_linear(unit):
    """Doubling the input doubles the work (a quadratic scan quadruples it; it took 9 s on 8000 units)."""
    def cost(n):
        return min(cpu_timed(last_boxed, unit * n)[1] for _ in range(3))

    assert cost(8000) < 0.5
    small, large = cost(40_000), cost(80_000)
    assert large < 3 * small + 0.02, (small, large)


MATH_BOMBS = {
    "power tower": "\\boxed{9^{9^{9^{9}}}}",
    "huge factorial": "\\boxed{(10^{9})!}",
    "nested fractions": "\\boxed{" + "\\frac{1}{1+" * 20 + "1" + "}" * 20 + "}",
    "1 MB without an answer": "x" * 1_000_000,
    "an answer of 10 KB": "\\boxed{" + "1+" * 5000 + "1}",
}


@pytest.mark.parametrize("name", MATH_BOMBS)
def test_math_bomb_scores_zero_within_its_cpu_budget(name):
    score, cpu_s = cpu_timed(math_accuracy, MATH_BOMBS[name], "1", timeout_s=0.5)
    assert score == 0.0 and cpu_s < 1.0


def test_long_correct_completions_still_score():
    thinking = "Let me check this once more. " * 8000  # 232 KB: extraction reads the tail only
    assert math_accuracy(thinking + "\\boxed{42}", "42") == 1.0
    assert math_accuracy("\\boxed{1} " * 100_000 + "\\boxed{42}", "42") == 1.0  # 1 MB, 100K boxes
    late = "\\boxed{42}" + "x" * SEARCH_CHARS
    assert math_accuracy(late, "42") == 0.0  # the documented bound: the box is before the searched tail
    assert math_accuracy(late, "42", search_chars=2 * SEARCH_CHARS) == 1.0


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_a_mixed_batch_of_bombs_and_good_samples():
    """Memory bombs crash their worker (counted, with the limit named), math bombs score 0.0, every good sample
    next to them scores 1.0, and no worker outlives the runner."""
    attacks = [UNCLOSED_BOXED, MATH_BOMBS["power tower"], "ALLOC", MATH_BOMBS["nested fractions"], "GROW",
               MATH_BOMBS["1 MB without an answer"]]
    completions, samples = [], []
    for i, attack in enumerate(attacks):
        completions += [f"<think>so</think> \\boxed{{{i}}}", attack]
        samples += [{"answer": str(i)}, {"answer": "1"}]
    pids = set()
    with bomb_runner() as runner:
        pids.update(w.process.pid for w in runner._workers + runner._spares)
        batch = runner.score(completions, samples)
        pids.update(w.process.pid for w in runner._workers + runner._spares)
    crashed = [completions.index("ALLOC"), completions.index("GROW")]
    assert [i for i, f in enumerate(batch.failure) if f is not None] == crashed
    text = f"math_accuracy, test_bomb: the reward worker ran out of memory (worker_memory_bytes={MEMORY_BYTES})"
    assert [batch.errors[i] for i in crashed] == [text, text]
    assert batch.metrics()["reward/crashes"] == 2.0
    assert batch.total == [1.0 if i % 2 == 0 else 0.0 for i in range(len(completions))]
    deadline = time.monotonic() + 5.0
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if _alive(pid)]


def test_a_correct_answer_scores_the_same_on_a_loaded_machine():
    """Four busy processes share the two cores with the scoring: it then takes 4-10 times its CPU time in wall
    time, past a limit of three times its CPU time, which is not reached because the limits count CPU time.
    (A full collection of this process's heap can cost as much as the scoring: none runs during either.)"""
    def sum_of_ones(k):  # ~0.15 s of CPU time to parse and compare, a new expression each time (no cache)
        return "\\boxed{" + "+".join(["1"] * 400) + f"+{k}" + "}", str(400 + k)

    math_accuracy(*sum_of_ones(1), timeout_s=60.0)
    with bomb_runner() as runner:
        gc.collect()
        gc.disable()
        spinners = []
        try:
            cost = min(cpu_timed(math_accuracy, *sum_of_ones(k), timeout_s=60.0)[1] for k in (2, 3))
            spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
            start = time.monotonic()
            in_process = math_accuracy(*sum_of_ones(4), timeout_s=3 * cost)
            in_process_wall_s = time.monotonic() - start
            # BURN: 0.6 s of CPU time against the runner's 1 s limit
            batch = runner.score(["BURN", "\\boxed{5}"], [{"answer": "0"}, {"answer": "5"}])
        finally:
            gc.enable()
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
    assert in_process == 1.0, (cost, in_process_wall_s)
    assert batch.failure == [None, None] and batch.total == [1.0, 1.0], (batch.errors, batch.wall_s)


@pytest.mark.parametrize("override", ["rewards.timeout_s=.inf", "rewards.timeout_s=1e999"])
def test_an_infinite_reward_timeout_is_refused(override):
    # the config loader refuses every non-finite float first, naming the key; RewardConfig itself refuses it too
    with pytest.raises(ValueError, match="rewards.timeout_s: expected a finite float, got inf"):
        load_run_config(None, [override])
    with pytest.raises(ValueError, match="RewardConfig.timeout_s must be a finite number of seconds > 0, got inf"):
        RewardConfig(timeout_s=float("inf"))
    with pytest.raises(ValueError, match="rewards.timeout_s must be a finite number of seconds > 0, got inf"):
        EvalRewardsConfig(timeout_s=float("inf"))


@pytest.mark.parametrize("kwargs, field", [({"timeout_s": float("inf")}, "timeout_s"), ({"timeout_s": 0}, "timeout_s"),
                                           ({"search_chars": 0}, "search_chars")])
def test_math_accuracy_bounds_cannot_be_lifted(kwargs, field):
    """search_chars=0 would search the whole completion (text[-0:]); timeout_s=0 or inf would arm no deadline."""
    with pytest.raises(ValueError, match=f"rewards.reward_kwargs.math_accuracy.{field} must be"):
        math_accuracy("\\boxed{1}", "1", **kwargs)
