"""`r1-megatron serve`: an HF directory or a training checkpoint behind an OpenAI-compatible HTTP server.

    r1-megatron serve --model HF_DIR [--host 127.0.0.1 --port 8000]
    torchrun --nproc-per-node 2 -m r1_megatron serve --ckpt RUN_DIR --tp 2   # rank 0 serves HTTP

Every rank loads its part of the model and runs the engine loop; rank 0 also runs uvicorn and broadcasts each
step's new requests and aborts to the others (engine_loop.py). SIGTERM (or Ctrl-C): new requests get 503, the
running ones finish for up to --shutdown-timeout seconds, the rest are aborted, and every rank exits 0.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
from pathlib import Path

from r1_megatron.evaluation.config import EvalModelConfig
from r1_megatron.runtime import ParallelConfig

DEFAULT_MAX_SEQ_LEN = 4096


@dataclasses.dataclass
class ServeConfig:
    """What `serve` loads and how (the `model`/`parallel`/`seed` trio is what evaluation's model loading reads)."""

    model: EvalModelConfig
    parallel: ParallelConfig
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 64
    max_seq_len: int | None = None  # None: min(the model's max positions, 4096)
    max_queue: int = 256
    served_model_name: str | None = None
    shutdown_timeout: float = 30.0

    def __post_init__(self):
        for name, low in (("port", 0), ("max_batch_size", 1), ("max_queue", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"serve: --{name.replace('_', '-')} must be an int >= {low}, got {value!r}")
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise ValueError(f"serve: --max-seq-len must be >= 2, got {self.max_seq_len}")
        if self.shutdown_timeout < 0:
            raise ValueError(f"serve: --shutdown-timeout must be >= 0, got {self.shutdown_timeout}")

    def name(self) -> str:
        """--served-model-name, else the model directory's (or run directory's) basename."""
        source = self.model.path or self.model.checkpoint
        return self.served_model_name or Path(source).resolve().name


def add_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="HF_DIR", help="an HF model directory")
    source.add_argument("--ckpt", metavar="RUN_DIR", help="a run directory, checkpoint root or checkpoint")
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: the model's / the run's)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    for size in ("tp", "pp", "ep"):
        parser.add_argument(f"--{size}", type=int, default=1, help=f"{size.upper()} size (default: 1)")
    parser.add_argument("--etp", type=int, default=None, help="expert-TP size (default: --tp)")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="an HF model's dtype (default: bf16)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="sequences decoded together (default: 64)")
    parser.add_argument("--max-seq-len", type=int, default=None,
                        help="prompt + completion tokens (default: min(the model's max positions, 4096))")
    parser.add_argument("--max-queue", type=int, default=256,
                        help="requests held at once, running or waiting; more get 503 (default: 256)")
    parser.add_argument("--served-model-name", default=None, help="the model's name in the API (default: the "
                                                                  "model or run directory's name)")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0,
                        help="seconds running requests may finish after SIGTERM before they are aborted (default: 30)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the draw of unseeded requests' seeds (default: 0)")


def config_from_args(args) -> ServeConfig:
    model = EvalModelConfig(path=args.model, checkpoint=args.ckpt, tokenizer=args.tokenizer, dtype=args.dtype)
    parallel = ParallelConfig(tp=args.tp, pp=args.pp, ep=args.ep, etp=args.etp)
    return ServeConfig(model, parallel, seed=args.seed, host=args.host, port=args.port,
                       max_batch_size=args.max_batch_size, max_seq_len=args.max_seq_len, max_queue=args.max_queue,
                       served_model_name=args.served_model_name, shutdown_timeout=args.shutdown_timeout)


def main(args) -> int:
    return serve(config_from_args(args))


def serve(cfg: ServeConfig) -> int:
    """Load the model, start the engine loop and (rank 0) uvicorn; return 0 once shut down. Collective."""
    import torch.distributed as dist

    from r1_megatron.evaluation.model_loading import eval_model

    from .engine_loop import EngineLoop, RankLink

    loaded = eval_model(cfg)  # a missing directory fails here, before the model is built
    engine = _engine(loaded.build(cfg), loaded.tokenizer, cfg)
    link = RankLink() if dist.get_world_size() > 1 else None
    engine_loop = EngineLoop(engine, max_queue=cfg.max_queue, link=link)
    try:
        if link is not None and link.rank != 0:
            # torchrun forwards SIGTERM to every rank: only rank 0 decides when the loop ends
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            engine_loop.run()
        else:
            _serve_http(engine_loop, engine, loaded.tokenizer, cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _engine(model, tokenizer, cfg: ServeConfig):
    from r1_megatron.rollout import Engine

    max_seq_len = cfg.max_seq_len or min(model.model_config.max_position_embeddings, DEFAULT_MAX_SEQ_LEN)
    eos = {tokenizer.eos_token_id, *generation_eos_ids(cfg.model.path or cfg.model.tokenizer)}
    return Engine(model, max_batch_size=cfg.max_batch_size, max_seq_len=max_seq_len, eos_token_ids=sorted(eos),
                  seed=cfg.seed)


def generation_eos_ids(directory: str | None) -> list[int]:
    """The eos_token_id (an int or a list) of the directory's generation_config.json: chat models end a turn
    with a token other than the tokenizer's eos (Qwen2.5-Instruct lists <|im_end|> and <|endoftext|>), and
    transformers stops at every one of them. [] without the file."""
    path = Path(directory or "") / "generation_config.json"
    if directory is None or not path.is_file():
        return []
    ids = json.loads(path.read_text()).get("eos_token_id")
    ids = [ids] if isinstance(ids, int) else ids or []
    if not all(isinstance(i, int) and i >= 0 for i in ids):
        raise ValueError(f"{path}: eos_token_id must be a token id or a list of them, got {ids!r}")
    return ids


def _serve_http(engine_loop, engine, tokenizer, cfg: ServeConfig) -> None:
    import uvicorn

    from .app import ServedModel, build_app
    from .http_server import DrainingServer

    served = ServedModel(cfg.name(), tokenizer, engine.max_seq_len, engine.model.model_config.vocab_size,
                         engine.max_batch_size)
    server = DrainingServer(uvicorn.Config(build_app(engine_loop, served), host=cfg.host, port=cfg.port,
                                           log_level=os.environ.get("R1_SERVE_LOG_LEVEL", "warning"),
                                           timeout_graceful_shutdown=5),
                            engine_loop, cfg.shutdown_timeout, served.name)
    thread = threading.Thread(target=_run_loop, args=(engine_loop, server), name="engine-loop", daemon=True)
    thread.start()
    server.run()
    engine_loop.close(0)  # uvicorn stopped for another reason (a second Ctrl-C): abort what is left
    thread.join()
    if engine_loop.error is not None:
        raise engine_loop.error


def _run_loop(engine_loop, server) -> None:
    """The engine thread; when the loop ends (drained, or failed) uvicorn is told to exit."""
    try:
        engine_loop.run()
    finally:
        server.should_exit = True
