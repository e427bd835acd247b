"""`r1-megatron serve` as a process: it prints its URL when ready; SIGTERM mid-stream refuses new requests (503)
while the running stream finishes, then the process exits 0 and is gone."""
import http.client
import json
import os
import select
import signal
import sys
import time

import pytest

from tests.parallel.launch import ProcessGroup, worker_env
from tests.serving.server_fixtures import free_port


def read_line_with(proc, needle: str, seconds: float) -> str:
    """The first stdout line containing needle (fails after `seconds`, with what the process printed)."""
    deadline, seen = time.monotonic() + seconds, []
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            line = proc.stdout.readline()
            if needle in line:
                return line
            seen.append(line)
            if not line and proc.poll() is not None:
                break
    raise AssertionError(f"no {needle!r} line; exit code {proc.poll()}, output:\n{''.join(seen)[-4000:]}"
                         f"{proc.stderr.read()[-4000:] if proc.poll() is not None else ''}")


def post(port: int, body: dict) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    return connection.getresponse()


def sse_events(response) -> list[str]:
    events = []
    for line in response:
        if line.startswith(b"data: "):
            events.append(line[6:].strip().decode())
    return events


def test_sigterm_finishes_the_running_stream_refuses_new_requests_and_exits(chat_dir):
    port = free_port()
    cmd = [sys.executable, "-m", "r1_megatron", "serve", "--model", str(chat_dir), "--dtype", "fp32", "--port",
           str(port), "--served-model-name", "tiny", "--max-batch-size", "4", "--shutdown-timeout", "60"]
    with ProcessGroup(cmd, worker_env()) as proc:
        assert read_line_with(proc, "serving", 120).strip() == f"serving 'tiny' at http://127.0.0.1:{port}/v1"
        max_tokens = 240
        stream = post(port, {"model": "tiny", "prompt": "What is 1 + 2?", "max_tokens": max_tokens,
                             "temperature": 0, "stream": True, "n": 4})
        first = stream.readline()
        assert stream.status == 200 and first.startswith(b"data: ")
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while (refused := post(port, {"model": "tiny", "prompt": "1", "max_tokens": 1})).status != 503:
            refused.read()
            assert time.monotonic() < deadline, "new requests were still accepted after SIGTERM"
        assert json.loads(refused.read())["error"]["type"] == "server_shutting_down"
        events = sse_events(stream)
        assert events[-1] == "[DONE]"
        finish = [c["finish_reason"] for e in events[:-1] for c in json.loads(e)["choices"] if c["finish_reason"]]
        assert finish == ["length"] * 4  # the running request finished within the grace period
        assert proc.wait(timeout=60) == 0
        time.sleep(0.5)
        with pytest.raises(ProcessLookupError):  # nothing of it is left: no process in its group
            os.killpg(proc.pid, 0)
