"""`r1-megatron eval`: evaluate an HF directory or a training checkpoint on benchmarks with R1's protocol, or
re-score the samples of an earlier evaluation with no model at all (`--samples`).

    r1-megatron eval --model HF_DIR [--benchmarks math500_sample,aime_sample] [--out eval] [sampling.k=4 ...]
    r1-megatron eval --ckpt RUN_DIR parallel.tp=2          # under torchrun: every rank runs this command
    r1-megatron eval --samples eval/samples.jsonl          # re-score, recompute every number

OUT/samples.jsonl gets every sample as its question completes (an interrupted evaluation rerun with the same
command resumes where it stopped), OUT/results.json every number with the settings, and the table is printed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from r1_megatron.atomic_file import write_text_atomically

from .config import EvalRunConfig
from .report import all_results, markdown_table
from .sample_store import SampleStore, read_samples

SAMPLES_FILE, RESULTS_FILE = "samples.jsonl", "results.json"


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None, help="YAML recipe (default: the built-in r1_eval.yaml)")
    parser.add_argument("--model", default=None, metavar="HF_DIR", help="an HF model directory (model.path)")
    parser.add_argument("--ckpt", default=None, metavar="RUN_DIR",
                        help="a run directory, checkpoint root or checkpoint (model.checkpoint)")
    parser.add_argument("--benchmarks", default=None, metavar="A,B", help="benchmark names (benchmarks.names)")
    parser.add_argument("--out", default=None, metavar="DIR", help="output directory (out; default: eval)")
    parser.add_argument("--samples", default=None, metavar="SAMPLES_JSONL",
                        help="re-score this samples file and recompute its results; no model is loaded")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. sampling.k=4 parallel.tp=2")


def main(args) -> int:
    from r1_megatron.run_config import dump_run_config, load_run_config

    cfg = load_run_config(args.config, _flag_overrides(args) + list(args.overrides), cls=EvalRunConfig)
    if args.print_config:
        print(dump_run_config(cfg), end="")
        return 0
    if args.samples is not None:
        return rescore(args.samples, Path(args.out) if args.out else Path(args.samples).parent, cfg)
    return evaluate(cfg)


def _flag_overrides(args) -> list[str]:
    flags = {"model.path": args.model, "model.checkpoint": args.ckpt, "out": args.out,
             "benchmarks.names": f"[{args.benchmarks}]" if args.benchmarks else None}
    return [f"{key}={json.dumps(value) if key != 'benchmarks.names' else value}" for key, value in flags.items()
            if value is not None]


# ------------------------------------------------------------------------------------------- evaluate


def evaluate(cfg: EvalRunConfig, *, keep_process_group: bool = False) -> int:
    """Load the benchmarks and their questions (bad input fails before any model is loaded), then the model and
    the engine; run every question not in OUT/samples.jsonl yet; write results.json and print the table (rank 0).
    Collective under torchrun. keep_process_group: leave torch.distributed up afterwards (`r1-megatron pipeline`
    runs further stages in this process; the command itself tears it down on every exit path)."""
    import torch.distributed as dist

    from .benchmark_suite import load_benchmarks, load_questions
    from .evaluator import BenchmarkRun
    from .model_loading import eval_model

    if cfg.model.path is None and cfg.model.checkpoint is None:
        raise ValueError("eval: set --model HF_DIR or --ckpt RUN_DIR (or --samples FILE to re-score samples)")
    specs = load_benchmarks(cfg.benchmarks.file, cfg.benchmarks.names or None)
    if cfg.benchmarks.limit is not None:
        specs = [dataclasses.replace(s, limit=cfg.benchmarks.limit) for s in specs]
    model = eval_model(cfg)
    runs = [BenchmarkRun.build(s, load_questions(s, model.tokenizer), cfg.sampling) for s in specs]
    header = eval_header(cfg, model.model_id, runs)
    # rank 0 (RANK under torchrun) keeps the samples; opened before the model loads, so that a rerun with other
    # settings is refused at once
    store = SampleStore(Path(cfg.out) / SAMPLES_FILE, header, {r.name: r.k for r in runs}) \
        if int(os.environ.get("RANK", "0")) == 0 else None
    try:
        _evaluate(cfg, model, runs, header, store)
    finally:  # every exit path: ranks must not wait on a peer that has left
        if store is not None:
            store.close()
        if dist.is_initialized() and not keep_process_group:
            dist.destroy_process_group()
    return 0


def _evaluate(cfg: EvalRunConfig, model, runs, header: dict, store: SampleStore | None) -> None:
    from r1_megatron.rollout import Engine

    from .evaluator import Evaluator

    longest = max((len(q.prompt_ids) for r in runs for q in r.questions), default=1)
    max_seq_len = longest + cfg.sampling.max_new_tokens + 1
    engine = Engine(model.build(cfg), max_batch_size=cfg.engine.max_batch_size, max_seq_len=max_seq_len,
                    eos_token_ids=[model.tokenizer.eos_token_id], seed=cfg.seed,
                    cache=cfg.engine.cache_for(max_seq_len), graphs=cfg.engine.graphs)
    evaluator = Evaluator(engine, model.tokenizer, cfg.sampling, cfg.rewards.runner_config(), seed=cfg.seed,
                          questions_per_round=cfg.engine.questions_per_round, progress=cfg.progress)
    before = len(store.records) if store else 0
    started = time.perf_counter()
    evaluator.run(runs, store)
    wall = time.perf_counter() - started
    if store is not None:
        new = store.records[before:]
        throughput = {"wall_s": wall, **evaluator.timing, "questions": sum(1 for r in new if r["sample"] == 0),
                      "generated_tokens": sum(len(r["token_ids"]) for r in new)}
        throughput |= {"questions_per_s": throughput["questions"] / max(wall, 1e-9),
                       "generated_tokens_per_s": throughput["generated_tokens"] / max(wall, 1e-9)}
        finish(Path(cfg.out), header, store.records, store.path, throughput=throughput)


def eval_header(cfg: EvalRunConfig, model_id: dict, runs) -> dict[str, Any]:
    """What decides the samples (a resumed evaluation must match it) and how each benchmark is measured."""
    from r1_megatron.run_config import config_to_dict

    settings = {"model": model_id, "seed": cfg.seed, "sampling": config_to_dict(cfg.sampling),
                "limit": cfg.benchmarks.limit, "prompts": {r.name: _prompt_digest(r) for r in runs}}
    return {"settings": settings, "benchmarks": {r.name: r.header() for r in runs}}


def _prompt_digest(run) -> str:
    import hashlib

    return hashlib.sha256(json.dumps([[q.id, list(q.prompt_ids)] for q in run.questions]).encode()).hexdigest()[:16]


def finish(out: Path, header: dict, records: list[dict], samples: Path, **extra) -> dict:
    """results.json (every number, the settings) and the markdown table on stdout."""
    results = all_results(header["benchmarks"], records)
    document = {"results": results, "settings": header["settings"], "benchmarks": header["benchmarks"], **extra}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / RESULTS_FILE, json.dumps(document, indent=2) + "\n")
    print("\n" + markdown_table(results))
    print(f"\nresults: {out / RESULTS_FILE}\nsamples: {samples}", flush=True)
    return document


# ------------------------------------------------------------------------------------------- re-score


def rescore(path: str, out: Path, cfg: EvalRunConfig) -> int:
    """Score every saved sample again (the same rewards, in the same bounded worker processes) and recompute the
    results from the samples alone. A file without a header is measured with pass@1, pass@n and cons@n (n: its
    samples per question)."""
    from .rescoring import check_records, inferred_benchmarks, rescore_records

    header, records = read_samples(path)
    if not records:
        raise ValueError(f"{path}: no samples to score")
    check_records(records, path, header=header is not None)
    benchmarks = header["benchmarks"] if header else inferred_benchmarks(records)
    records = rescore_records(records, benchmarks, cfg.rewards.runner_config(), source=path)
    finish(out, {"settings": (header or {}).get("settings", {}), "benchmarks": benchmarks}, records, Path(path),
           rescored_from=str(path), **_earlier_throughput(out))
    return 0


def _earlier_throughput(out: Path) -> dict:
    """The throughput of the evaluation whose results.json the re-scoring replaces (only it measured one)."""
    try:
        earlier = json.loads((out / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {"throughput": earlier["throughput"]} if isinstance(earlier, dict) and "throughput" in earlier else {}
