"""Helpers of the tests that run `r1-megatron serve` as a process (alone and under torchrun)."""
import http.client
import json
import select
import threading
import time


def drain_stderr(proc) -> list[str]:
    """stderr read on a thread into a list, so that a chatty child never blocks on a full pipe."""
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    return lines


def read_line_with(proc, needle: str, seconds: float, stderr: list[str]) -> str:
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
                         f"{''.join(stderr)[-6000:]}")


def post(port: int, body: dict, path: str = "/v1/completions") -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    return connection.getresponse()


def sse_events(response) -> list[str]:
    events = []
    for line in response:
        if line.startswith(b"data: "):
            events.append(line[6:].strip().decode())
    return events
