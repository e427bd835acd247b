"""The engine loop on its own (a second engine of the tiny chat model, no HTTP): the queue bound, and shutdown —
new requests refused, what is left at the deadline aborted, the loop ended."""
import threading
import time

import pytest

from r1_megatron.rollout import FinishReason, SamplingParams
from r1_megatron.serving.engine_loop import EngineLoop, Overloaded, ShuttingDown
from tests.serving.server_fixtures import load_engine


@pytest.fixture
def engine(chat_dir):
    return load_engine(chat_dir, max_batch_size=4)[0]


def _finishes(outputs: list) -> dict[int, FinishReason]:
    return {s.index: s.finish_reason for out in outputs for s in out.samples if s.finish_reason is not None}


def test_the_queue_bound_and_the_refusal_after_close(engine):
    loop = EngineLoop(engine, max_queue=2)
    loop.submit([1, 2], SamplingParams(max_new_tokens=2), print)
    loop.submit([1, 2], SamplingParams(max_new_tokens=2), print)
    with pytest.raises(Overloaded):
        loop.submit([1, 2], SamplingParams(max_new_tokens=2), print)
    loop.close(0)
    with pytest.raises(ShuttingDown):
        loop.submit([1, 2], SamplingParams(max_new_tokens=2), print)
    assert (loop.counters.accepted, loop.counters.rejected) == (2, 2)
    loop.run()  # the deadline has passed: both are aborted before they run, then the loop ends
    assert loop.counters.live == 0 and loop.counters.aborts == 2 and not engine.has_unfinished_requests


def test_close_aborts_what_runs_past_the_deadline(engine):
    """(Finishing within the grace period: tests/serving/test_serve_command.py.)"""
    loop = EngineLoop(engine, max_queue=4, heartbeat_s=0.05)
    short, long = [], []
    loop.submit([3, 4, 5], SamplingParams(temperature=0, max_new_tokens=3), short.append)
    # two samples that would run to the end of the context
    loop.submit([3, 4, 5], SamplingParams(n=2, temperature=0, max_new_tokens=engine.max_seq_len - 3), long.append)
    thread = threading.Thread(target=loop.run)
    thread.start()
    while not short or not short[-1].finished:
        time.sleep(0.005)
    loop.close(0)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert _finishes(short) == {0: FinishReason.LENGTH}
    assert _finishes(long) == {0: FinishReason.ABORT, 1: FinishReason.ABORT} and long[-1].finished
    assert sum(len(s.token_ids) for out in long for s in out.samples) < 2 * (engine.max_seq_len - 3)
    assert loop.counters.live == 0 and loop.counters.aborts == 1 and not engine.has_unfinished_requests
