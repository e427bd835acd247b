"""An in-process server for the serving tests: the tiny Qwen2 chat model (tests/models/hf_fixtures.py) loaded the
way `r1-megatron serve` loads it, its engine loop on a thread and uvicorn on another, on a free loopback port."""
from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
import urllib.request

import uvicorn

from r1_megatron.evaluation.config import EvalModelConfig
from r1_megatron.evaluation.model_loading import eval_model
from r1_megatron.runtime import ParallelConfig
from r1_megatron.serving.app import ServedModel, build_app
from r1_megatron.serving.command import ServeConfig, _engine
from r1_megatron.serving.engine_loop import EngineLoop

MODEL_NAME = "tiny-chat"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_engine(model_dir, max_batch_size: int = 64, checkpoint=None):
    """(engine, tokenizer) as `serve --model model_dir --dtype fp32` builds them (`serve --ckpt checkpoint` when
    a checkpoint is given)."""
    model = EvalModelConfig(checkpoint=str(checkpoint)) if checkpoint else EvalModelConfig(path=str(model_dir),
                                                                                              dtype="fp32")
    cfg = ServeConfig(model, ParallelConfig(), max_batch_size=max_batch_size)
    loaded = eval_model(cfg)
    return _engine(loaded.build(cfg), loaded.tokenizer, cfg), loaded.tokenizer


@dataclasses.dataclass
class RunningServer:
    engine: object
    tokenizer: object
    engine_loop: EngineLoop
    port: int
    threads: list[threading.Thread]
    server: uvicorn.Server

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.base_url + path, timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.engine_loop.close(0)
        self.threads[0].join(timeout=30)
        self.server.should_exit = True
        self.threads[1].join(timeout=30)
        assert not any(t.is_alive() for t in self.threads)


def start_server(engine, tokenizer, max_queue: int = 256) -> RunningServer:
    engine_loop = EngineLoop(engine, max_queue=max_queue, heartbeat_s=0.2)
    served = ServedModel(MODEL_NAME, tokenizer, engine.max_seq_len, engine.model.model_config.vocab_size,
                         engine.max_batch_size)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(engine_loop, served), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threads = [threading.Thread(target=engine_loop.run, daemon=True), threading.Thread(target=server.run, daemon=True)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and threads[1].is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    return RunningServer(engine, tokenizer, engine_loop, port, threads, server)
