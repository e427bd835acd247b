"""The in-process deadlines: the CPU one charges the scoring thread's computing, not its waiting nor other
threads' work; both nest (an inner one never outlives the outer) and restore what they replaced."""
import signal
import threading
import time

import pytest

from r1_megatron.rewards.deadline import RewardTimeout, cpu_deadline, wall_deadline


def spin(seconds):
    """Compute for ``seconds`` of this thread's CPU time."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def test_cpu_deadline_charges_computing_not_waiting():
    with cpu_deadline(0.1) as armed:
        time.sleep(0.3)  # three times the budget, in wall time, but no CPU
    assert armed
    began = time.thread_time()
    with pytest.raises(RewardTimeout):
        with cpu_deadline(0.1):
            spin(5.0)
    assert 0.1 <= time.thread_time() - began < 0.3


def test_other_threads_cpu_is_not_charged():
    """ITIMER_PROF counts the whole process: the handler re-arms until this thread has used its budget."""
    stop = threading.Event()
    busy = threading.Thread(target=lambda: [None for _ in iter(stop.is_set, True)])
    busy.start()
    try:
        with cpu_deadline(0.1):
            time.sleep(0.4)  # the other thread computes meanwhile
    finally:
        stop.set()
        busy.join()


def test_an_inner_deadline_never_outlives_the_outer_one():
    began = time.thread_time()
    with pytest.raises(RewardTimeout):
        with cpu_deadline(0.15):
            with cpu_deadline(5.0):
                spin(5.0)
    assert time.thread_time() - began < 0.35


def test_the_outer_deadline_resumes_with_what_it_had_left():
    began = time.thread_time()
    with pytest.raises(RewardTimeout):
        with cpu_deadline(0.3):
            with cpu_deadline(5.0):
                spin(0.15)
            spin(5.0)
    assert 0.3 <= time.thread_time() - began < 0.42  # not 0.45: the inner block's CPU counted
    assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)


def test_wall_deadline_and_restored_handlers():
    handlers = signal.getsignal(signal.SIGALRM), signal.getsignal(signal.SIGPROF)
    began = time.monotonic()
    with pytest.raises(RewardTimeout):
        with wall_deadline(0.1):
            time.sleep(2.0)
    assert time.monotonic() - began < 1.5
    with cpu_deadline(1.0), wall_deadline(1.0):
        pass
    assert (signal.getsignal(signal.SIGALRM), signal.getsignal(signal.SIGPROF)) == handlers
    assert signal.getitimer(signal.ITIMER_REAL) == signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)


def test_off_the_main_thread_it_is_not_armed():
    out = []

    def run():
        with cpu_deadline(0.01) as armed:
            spin(0.05)
        out.append(armed)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert out == [False]
