"""`r1-megatron serve --tp 2` under torchrun (2 ranks, gloo): rank 0 serves HTTP, both ranks step the engine in
lockstep; a greedy chat answer equals the single-process one, and SIGTERM ends every process."""
import json
import os
import signal
import sys
import time

import pytest

from tests.parallel.launch import ProcessGroup, worker_env
from tests.serving.conftest import CHAT
from tests.serving.serve_process import drain_stderr, post, read_line_with
from tests.serving.server_fixtures import free_port


def test_tp2_under_torchrun_answers_as_one_process(chat_dir, server, references):
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "r1_megatron",
           "serve", "--model", str(chat_dir), "--tp", "2", "--dtype", "fp32", "--port", str(port),
           "--served-model-name", "tiny", "--max-batch-size", "4"]
    with ProcessGroup(cmd, worker_env()) as proc:
        stderr = drain_stderr(proc)
        read_line_with(proc, "serving 'tiny'", 180, stderr)
        body = {"model": "tiny", "messages": CHAT, "max_tokens": len(references.chat_greedy), "temperature": 0}
        response = post(port, body, "/v1/chat/completions")
        answer = json.loads(response.read())
        assert response.status == 200, answer
        want = server.tokenizer.decode(references.chat_greedy, skip_special_tokens=True)
        assert answer["choices"][0]["message"]["content"] == want
        assert answer["usage"]["completion_tokens"] == len(references.chat_greedy)
        os.killpg(proc.pid, signal.SIGTERM)  # as a service manager stops the job (torchrun forwards it too)
        proc.wait(timeout=60)
        # the ranks exit after rank 0 broadcasts the stop, well before torchrun's SIGKILL 30 s after its SIGTERM
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)
        # torchrun itself reports the signal with a traceback; no rank does ("[rank0]: Traceback")
        assert "]: Traceback" not in "".join(stderr), "".join(stderr)[-6000:]
