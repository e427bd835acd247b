"""`r1-megatron serve` as a process: it prints its URL when ready; SIGTERM mid-stream refuses new requests (503)
while the running stream finishes, then the process exits 0 and is gone."""
import json
import os
import signal
import sys
import time

import pytest

from tests.parallel.launch import ProcessGroup, worker_env
from tests.serving.serve_process import drain_stderr, post, read_line_with, sse_events
from tests.serving.server_fixtures import free_port


def test_sigterm_finishes_the_running_stream_refuses_new_requests_and_exits(chat_dir):
    port = free_port()
    cmd = [sys.executable, "-m", "r1_megatron", "serve", "--model", str(chat_dir), "--dtype", "fp32", "--port",
           str(port), "--served-model-name", "tiny", "--max-batch-size", "4", "--shutdown-timeout", "60"]
    with ProcessGroup(cmd, worker_env()) as proc:
        stderr = drain_stderr(proc)
        assert read_line_with(proc, "serving", 120, stderr).strip() == f"serving 'tiny' at http://127.0.0.1:{port}/v1"
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


def test_the_generation_configs_eos_ids_end_completions_too(tmp_path):
    from r1_megatron.serving.command import generation_eos_ids

    assert generation_eos_ids(str(tmp_path)) == [] and generation_eos_ids(None) == []
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643]}))
    assert generation_eos_ids(str(tmp_path)) == [151645, 151643]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 7}))
    assert generation_eos_ids(str(tmp_path)) == [7]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": "x"}))
    with pytest.raises(ValueError, match="generation_config.json: eos_token_id must be a token id"):
        generation_eos_ids(str(tmp_path))
