"""Serving throughput and latency of OpenAI-compatible servers under concurrent streaming load: `r1-megatron serve`
against `transformers serve` (sequential `generate`, and with --continuous-batching), on one checkpoint.

    python benchmarks/bench_serve.py                       # the committed CPU run (results/serve_cpu_<model>.json)
    python benchmarks/bench_serve.py --smoke --out X.json  # CI size: a tiny model, concurrency 1 and 2, 4 tokens
    python benchmarks/bench_serve.py --gpu                 # Qwen2.5-1.5B-shaped random bf16 weights on CUDA:
                                                           #   ours vs transformers-cb, 128 + 128 tokens
    python benchmarks/bench_serve.py --servers transformers --levels 1 8   # a subset

Method.
- Same checkpoint: one HF directory written here (write_checkpoint): a random Qwen2 (transformers' init; PRESETS:
  `cpu`: hidden 384, 6 layers, vocab 4096, fp32; `gpu-1.5b`: Qwen2.5-1.5B's shape, bf16; `smoke`: tiny) with a
  byte-level BPE tokenizer trained here (write_tokenizer) on the repository's README.md and docs/*.md (Qwen2's
  normalizer, pre-tokenizer and specials, a Qwen2-style chat template), padded with filler tokens to the model's
  vocabulary. Its EOS
  has id vocab_size, outside the output layer: no server can sample it, so every request generates exactly
  max_tokens tokens on every server without a server-specific `ignore_eos` (transformers serve rejects unknown
  fields). The actual counts are checked per server from each response's `usage` (checks.*_tokens_ok).
- Same requests: --prompts fixed prompt texts (paragraphs of the corpus cut to exactly --prompt-tokens tokens),
  request i uses prompt i mod --prompts; greedy (temperature 0), max_tokens M, `stream: true` with
  `stream_options.include_usage`; /v1/completions by default (raw text, no template), --endpoint chat sends the
  prompt as one user message through each server's chat template. Prompt token counts are compared across servers
  from `usage.prompt_tokens` (checks.prompt_tokens_match).
- Load: for each concurrency level C (default 1, 8, 64), C client workers each send their next request as soon as
  their previous one finished (closed loop) until R requests (default max(8, 2C); --gpu: max(4, C)) are done; one process, the
  official `openai` AsyncOpenAI client (its connection pool sized to C). --warmup requests run before the first
  level, untimed. Each server runs alone (started by this script in its own process group, killed with the whole
  group when its levels are done or anything fails), at --threads torch threads (OMP_NUM_THREADS; default 1 on CPU,
  so the client keeps the other core).
- Figures per level (time.perf_counter on the client): requests/s = R / wall and output tokens/s = sum of
  usage.completion_tokens / wall, wall = first send to last response end; TTFT = send to the first chunk carrying
  text; ITL = the gaps between successive text-carrying chunks of a request, pooled over requests (a server that
  sends several tokens in one chunk, or holds back a partial UTF-8 character, has fewer, longer gaps); TPOT per
  request = (last text chunk - first text chunk) / (completion_tokens - 1). p50/p90 are linear-interpolated
  percentiles (percentile()), means are arithmetic. Our server's GET /stats after each level is recorded
  (peak_running: the largest running batch since the server started, the warmup included).
- Ratios (ratios_ours_over[peer][C]): ours / peer for requests/s and output tokens/s (> 1: ours is faster), peer /
  ours for the TTFT and ITL p50s (> 1: ours is quicker).

Prints a table and writes one JSON object {"benchmark", "command", "env", "settings", "model", "servers",
"ratios_ours_over", "checks"} (+ a PNG beside it unless --no-plot).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import command_line, cpu_name, package_version, write_payload  # noqa: E402
from bench_eval import CHAT_TEMPLATE, EOS, PAD, QWEN2_COMMON, QWEN25_15B, TURN  # noqa: E402
from server_process import Server, free_port, get_json  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_DIR = HERE / "results"

CPU_QWEN2 = dict(vocab_size=4096, hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                 num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False)
SMOKE_QWEN2 = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
SERVERS = ("ours", "transformers", "transformers-cb")
PRESETS = {  # model, dtype and workload; --levels/--requests/--max-tokens/... override
    "cpu": dict(model=CPU_QWEN2, name="qwen2-h384-l6", dtype="fp32", device="cpu", levels=[1, 8, 64],
                max_tokens=64, prompt_tokens=64, warmup=4, min_requests=8, waves=2, servers=SERVERS),
    "smoke": dict(model=SMOKE_QWEN2, name="smoke", dtype="fp32", device="cpu", levels=[1, 2], max_tokens=4,
                  prompt_tokens=16, warmup=1, min_requests=1, waves=2, servers=SERVERS),
    # one wave per level and no sequential transformers: its 64 requests one after another would take minutes
    "gpu-1.5b": dict(model=QWEN25_15B, name="qwen2.5-1.5b-shape", dtype="bf16", device="cuda", levels=[1, 8, 64],
                     max_tokens=128, prompt_tokens=128, warmup=8, min_requests=4, waves=1,
                     servers=("ours", "transformers-cb")),
}
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
QWEN2_PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                           r"""\s*[\r\n]+|\s+(?!\S)|\s+""")  # transformers' tokenization_qwen2.PRETOKENIZE_REGEX


@dataclasses.dataclass
class Settings:
    """The workload every server gets."""

    preset: str
    levels: list[int]
    requests: list[int]  # per level
    max_tokens: int
    prompt_tokens: int
    prompts: int
    endpoint: str
    dtype: str
    device: str
    threads: int
    warmup: int
    servers: list[str]
    seed: int = 0

    def __post_init__(self):
        if len(self.requests) != len(self.levels):
            raise ValueError(f"requests: {len(self.requests)} counts for {len(self.levels)} levels")
        for name in ("max_tokens", "prompt_tokens", "prompts", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if min(self.levels) < 1 or min(self.requests) < 1:
            raise ValueError(f"levels/requests must be >= 1, got {self.levels} / {self.requests}")
        if self.endpoint not in ("completions", "chat"):
            raise ValueError(f"endpoint must be completions or chat, got {self.endpoint!r}")
        unknown = set(self.servers) - set(SERVERS)
        if unknown or not self.servers:
            raise ValueError(f"servers: unknown {sorted(unknown)} (known: {', '.join(SERVERS)})")


# ----------------------------------------------------------------------------------------------- the checkpoint


def corpus_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def write_tokenizer(directory: Path, model_vocab: int, corpus: list[str]) -> dict:
    """A byte-level BPE trained on `corpus` (ids 0 PAD, 1 TURN, then the 256 byte symbols and merges, up to
    min(model_vocab, 4096) tokens), filler tokens <|fill{i}|> up to model_vocab - 1 (decodable, never produced by
    encoding) and EOS = model_vocab, outside the output layer (never sampled). Returns {"trained", "fillers"}."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    # Qwen2's normalizer and pre-tokenizer: transformers loads a qwen2 model's tokenizer as Qwen2Tokenizer, which
    # imposes them, so any other pre-tokenizer would tokenize differently there than in tokenizer.json
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=min(model_vocab, 4096), special_tokens=[PAD, TURN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpus, trainer)
    spec = json.loads(backend.to_str())
    trained = len(spec["model"]["vocab"])
    if trained > model_vocab:
        raise ValueError(f"write_tokenizer: model_vocab {model_vocab} < {trained} trained tokens")
    spec["model"]["vocab"].update({f"<|fill{i}|>": i for i in range(trained, model_vocab)})
    backend = Tokenizer.from_str(json.dumps(spec))
    backend.add_special_tokens([AddedToken(EOS, special=True)])
    if backend.token_to_id(EOS) != model_vocab:
        raise ValueError(f"write_tokenizer: EOS got id {backend.token_to_id(EOS)}, not {model_vocab}")
    backend.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "pad_token": PAD,
              "chat_template": CHAT_TEMPLATE, "model_max_length": 1 << 20, "clean_up_tokenization_spaces": False}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return {"trained": trained, "fillers": model_vocab - trained}


def write_checkpoint(directory: Path, model: dict, dtype: str, seed: int, device: str, corpus: list[str]) -> dict:
    """A random Qwen2 (transformers' init) in `dtype` with write_tokenizer's tokenizer; returns its vocab counts."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):  # initialising 1.5B parameters is much faster on the GPU
        hf = Qwen2ForCausalLM(Qwen2Config(**QWEN2_COMMON, **model))
    hf.to(getattr(torch, TORCH_DTYPES[dtype])).save_pretrained(directory)
    del hf
    if device == "cuda":
        torch.cuda.empty_cache()  # the servers need the memory
    return write_tokenizer(directory, model["vocab_size"], corpus)


def make_prompts(tokenizer, corpus: list[str], n: int, prompt_tokens: int) -> list[str]:
    """N prompt texts of exactly `prompt_tokens` tokens: the first N paragraphs of the corpus whose first
    `prompt_tokens` tokens decode to a text that encodes back to those tokens (a cut can merge or split otherwise)."""
    prompts = []
    for paragraph in (p.strip() for text in corpus for p in text.split("\n\n")):
        ids = tokenizer.encode(paragraph, add_special_tokens=False)[:prompt_tokens]
        text = tokenizer.decode(ids)
        if len(ids) == prompt_tokens and tokenizer.encode(text, add_special_tokens=False) == ids:
            prompts.append(text)
        if len(prompts) == n:
            return prompts
    raise ValueError(f"prompts: the corpus has only {len(prompts)} paragraphs of >= {prompt_tokens} tokens")


# ----------------------------------------------------------------------------------------------- the load


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's default): sorted x,
    h = (n - 1)·q/100, x[floor h] + (h - floor h)·(x[floor h + 1] - x[floor h])."""
    if not values:
        raise ValueError("percentile: no values")
    x = sorted(values)
    h = (len(x) - 1) * q / 100
    lo = int(h)
    return x[lo] if lo + 1 >= len(x) else x[lo] + (h - lo) * (x[lo + 1] - x[lo])


def chunk_text(chunk, endpoint: str) -> str:
    """The generated text a streamed chunk carries (chat: content and reasoning_content; completions: text)."""
    if not chunk.choices:
        return ""
    choice = chunk.choices[0]
    if endpoint == "completions":
        return choice.text or ""
    delta = choice.delta
    return (delta.content or "") + (getattr(delta, "reasoning_content", None) or "")


async def one_request(client, model: str, endpoint: str, prompt: str, max_tokens: int) -> dict:
    """One streaming greedy request; its send time, text-chunk arrival times, usage and finish reason."""
    kwargs = dict(model=model, max_tokens=max_tokens, temperature=0, stream=True,
                  stream_options={"include_usage": True})
    start = time.perf_counter()
    record = {"start": start, "chunks": [], "usage": None, "finish_reason": None, "error": None}
    try:
        if endpoint == "completions":
            stream = await client.completions.create(prompt=prompt, **kwargs)
        else:
            stream = await client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **kwargs)
        async for chunk in stream:
            if chunk_text(chunk, endpoint):
                record["chunks"].append(time.perf_counter())
            if chunk.choices and chunk.choices[0].finish_reason:
                record["finish_reason"] = chunk.choices[0].finish_reason
            if chunk.usage is not None:
                record["usage"] = {"prompt_tokens": chunk.usage.prompt_tokens,
                                   "completion_tokens": chunk.usage.completion_tokens}
    except Exception as exc:  # a failed request is counted and reported, not fatal to the level
        record["error"] = f"{type(exc).__name__}: {exc}"[:300]
    record["end"] = time.perf_counter()
    return record


async def run_level(base_url: str, model: str, endpoint: str, prompts: list[str], max_tokens: int,
                    concurrency: int, n_requests: int) -> tuple[list[dict], float]:
    """N requests through C closed-loop workers; (records in request order, wall seconds)."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0, timeout=3600.0)
    pending = iter(range(n_requests))
    records: list[dict | None] = [None] * n_requests

    async def worker():
        for i in pending:
            records[i] = await one_request(client, model, endpoint, prompts[i % len(prompts)], max_tokens)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, n_requests))))
        wall = time.perf_counter() - start
    finally:
        await client.close()
    return records, wall


def stats_of(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p90": None, "mean": None}
    return {"p50": percentile(values, 50), "p90": percentile(values, 90), "mean": sum(values) / len(values)}


def summarise(records: list[dict], wall: float, max_tokens: int) -> dict:
    """A level's figures from its request records (see the module docstring); times in ms."""
    ok = [r for r in records if r["error"] is None and r["chunks"] and r["usage"] is not None]
    tokens = [r["usage"]["completion_tokens"] for r in ok]
    gaps = [1e3 * (b - a) for r in ok for a, b in zip(r["chunks"], r["chunks"][1:])]
    tpot = [1e3 * (r["chunks"][-1] - r["chunks"][0]) / (t - 1) for r, t in zip(ok, tokens) if t > 1]
    return {"requests": len(records), "completed": len(ok), "wall_s": wall,
            "requests_per_s": len(ok) / wall, "output_tokens_per_s": sum(tokens) / wall,
            "ttft_ms": stats_of([1e3 * (r["chunks"][0] - r["start"]) for r in ok]), "itl_ms": stats_of(gaps),
            "tpot_ms": stats_of(tpot), "latency_ms": stats_of([1e3 * (r["end"] - r["start"]) for r in ok]),
            "completion_tokens": {"min": min(tokens, default=None), "max": max(tokens, default=None),
                                  "total": sum(tokens)},
            "all_max_tokens": bool(ok) and all(t == max_tokens for t in tokens),
            "prompt_tokens": sorted({r["usage"]["prompt_tokens"] for r in ok}),
            "text_chunks_per_request": stats_of([float(len(r["chunks"])) for r in ok]),
            "finish_reasons": sorted({str(r["finish_reason"]) for r in ok}),
            "errors": sorted({r["error"] or "no text or no usage" for r in records if r not in ok})[:5]}


# ----------------------------------------------------------------------------------------------- the servers


def server_command(name: str, model_dir: Path, port: int, s: Settings, extra: list[str]) -> list[str]:
    """The command line that starts server `name` on 127.0.0.1:port serving model_dir in s.dtype."""
    if name == "ours":  # batch and context sized to the workload (chat templates add a few prompt tokens)
        return [sys.executable, "-m", "r1_megatron", "serve", "--model", str(model_dir), "--host", "127.0.0.1",
                "--port", str(port), "--dtype", s.dtype, "--max-batch-size", str(max(s.levels)),
                "--max-seq-len", str(s.prompt_tokens + s.max_tokens + 32), *extra]
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--dtype", TORCH_DTYPES[s.dtype], "--device", s.device, "--log-level", "error"]
    return cmd + (["--continuous-batching"] if name == "transformers-cb" else [])


def server_env(s: Settings, name: str) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(s.threads)
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               TRANSFORMERS_VERBOSITY="error")
    if s.device == "cpu":
        env.setdefault("R1_MEGATRON_KERNELS", "torch")  # not Triton's interpreter
    # the repository root only for ours: its kernels/ folder would shadow the `kernels` package transformers probes
    paths = [str(REPO)] if name == "ours" else []
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def bench_server(name: str, model_dir: Path, prompts: list[str], s: Settings, tmp: Path, extra: list[str],
                 ready_timeout: float) -> dict:
    """Start server `name`, warm it up, run every level, stop it; its figures (or {"error": ...})."""
    port = free_port()
    cmd = server_command(name, model_dir, port, s, extra)
    result = {"command": " ".join(cmd).replace(sys.executable, "python"), "levels": {}}
    try:
        with Server(cmd, server_env(s, name), tmp, tmp / f"{name}.log", port, ready_timeout) as srv:
            result["startup_s"], result["model_id"] = srv.startup_s, srv.model
            if s.warmup:
                asyncio.run(run_level(srv.base_url, srv.model, s.endpoint, prompts, s.max_tokens, s.warmup, s.warmup))
            for level, n in zip(s.levels, s.requests):
                records, wall = asyncio.run(run_level(srv.base_url, srv.model, s.endpoint, prompts, s.max_tokens,
                                                      level, n))
                result["levels"][str(level)] = summarise(records, wall, s.max_tokens)
                if name == "ours":
                    result["levels"][str(level)]["server_stats"] = get_json(f"{srv.base_url}/stats")
                print(f"  {name} C={level}: {result['levels'][str(level)]['output_tokens_per_s']:.1f} tok/s",
                      flush=True)
        result["stopped_by"] = srv.stopped_by
    except Exception as exc:  # reported with the server's log; the other servers still run
        result["error"] = f"{type(exc).__name__}: {exc}"[-2500:]
    return json.loads(json.dumps(result).replace(str(tmp), "TMP"))  # the JSON names no path of this machine


# ----------------------------------------------------------------------------------------------- the report


def ratios(servers: dict, levels: list[int]) -> dict:
    """Per peer and level: ours / peer for requests/s and output tokens/s, peer / ours for TTFT and ITL p50 (> 1
    everywhere: ours is better); None where a side has no figure."""
    ours = servers.get("ours", {}).get("levels", {})
    out = {}
    for peer, result in servers.items():
        if peer == "ours" or not ours:
            continue
        out[peer] = {}
        for level in map(str, levels):
            a, b = ours.get(level), result.get("levels", {}).get(level)
            if not a or not b or not a["completed"] or not b["completed"]:
                out[peer][level] = None
                continue
            row = {k: a[k] / b[k] for k in ("requests_per_s", "output_tokens_per_s")}
            for k in ("ttft_ms", "itl_ms"):
                row[f"{k.removesuffix('_ms')}_p50"] = (b[k]["p50"] / a[k]["p50"] if a[k]["p50"] and b[k]["p50"]
                                                     else None)
            out[peer][level] = row
    return out


def checks(servers: dict, s: Settings) -> dict:
    """Same work: every request of every level completed with exactly max_tokens tokens (per server; None when
    it did not run), and the same prompt token counts on every server that ran."""
    out, prompt_counts = {}, {}
    for name, result in servers.items():
        levels = result.get("levels", {}).values()
        ran = "error" not in result and len(levels) == len(s.levels)
        out[f"{name}_tokens_ok"] = (all(lv["all_max_tokens"] and lv["completed"] == lv["requests"]
                                        for lv in levels) if ran else None)
        if ran:
            prompt_counts[name] = sorted({t for lv in levels for t in lv["prompt_tokens"]})
    out["prompt_tokens"] = prompt_counts
    out["prompt_tokens_match"] = len({json.dumps(v) for v in prompt_counts.values()}) == 1 if prompt_counts else None
    return out


def environment(device: str) -> dict:
    import torch

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {"device": torch.cuda.get_device_name() if device == "cuda" else cpu_name(), "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), "load_average_start": list(os.getloadavg()), "platform": platform.platform(),
            "python": platform.python_version(), "r1_megatron": head.stdout.strip() or None,
            **{pkg: package_version(pkg) for pkg in ("torch", "transformers", "openai", "fastapi", "uvicorn",
                                                     "tokenizers", "megatron-core")}}


def run(s: Settings, argv: list[str] | None, extra: list[str], ready_timeout: float) -> dict:
    from transformers import AutoTokenizer

    env = environment(s.device)
    preset = PRESETS[s.preset]
    files = corpus_files()
    corpus = [f.read_text() for f in files]
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = tmp / preset["name"]
        vocab = write_checkpoint(model_dir, preset["model"], s.dtype, s.seed, s.device, corpus)
        prompts = make_prompts(AutoTokenizer.from_pretrained(str(model_dir)), corpus, s.prompts, s.prompt_tokens)
        servers = {}
        for name in s.servers:
            print(f"server {name} ...", flush=True)
            servers[name] = bench_server(name, model_dir, prompts, s, tmp, extra, ready_timeout)
    env["load_average_end"] = list(os.getloadavg())
    corpus_sha = hashlib.sha256("".join(corpus).encode()).hexdigest()[:16]
    return {"benchmark": "serve", "command": command_line(__file__, argv), "env": env,
            "settings": dataclasses.asdict(s),
            "model": {"name": preset["name"], "source": "random weights (transformers init)",
                      "config": {**QWEN2_COMMON, **preset["model"]}, "dtype": s.dtype,
                      "tokenizer": {"kind": "byte-level BPE trained on the corpus, fillers to the vocab, EOS = vocab",
                                    "corpus": [str(f.relative_to(REPO)) for f in files], "corpus_sha256": corpus_sha,
                                    **vocab}},
            "prompts": prompts, "servers": servers, "ratios_ours_over": ratios(servers, s.levels),
            "checks": checks(servers, s)}


def print_table(payload: dict) -> None:
    s = payload["settings"]
    print(f"serve, preset {s['preset']}: /v1/{s['endpoint']}, {s['max_tokens']} tokens per request, prompts of "
          f"~{s['prompt_tokens']} tokens, {s['device']} {s['dtype']}, {s['threads']} server thread(s)")
    print(f"{'server':>16} | {'C':>3} | {'req':>4} | {'req/s':>7} | {'out tok/s':>9} | {'TTFT p50':>9} | "
          f"{'TTFT p90':>9} | {'ITL p50':>8} | {'ITL p90':>8} | {'TPOT p50':>8} | tokens/request")
    for name, result in payload["servers"].items():
        if "error" in result:
            print(f"{name:>16} | error: {result['error'][:300]}")
        for level, r in result["levels"].items():
            if not r["completed"]:
                print(f"{name:>16} | {level:>3} | no request completed: {r['errors']}")
                continue
            ms = lambda d: f"{d['p50']:.1f}"  # noqa: E731
            print(f"{name:>16} | {level:>3} | {r['requests']:>4} | {r['requests_per_s']:>7.2f} | "
                  f"{r['output_tokens_per_s']:>9.1f} | {ms(r['ttft_ms']):>9} | {r['ttft_ms']['p90']:>9.1f} | "
                  f"{ms(r['itl_ms']) if r['itl_ms']['p50'] is not None else '-':>8} | "
                  f"{r['itl_ms']['p90'] if r['itl_ms']['p90'] is not None else float('nan'):>8.1f} | "
                  f"{ms(r['tpot_ms']) if r['tpot_ms']['p50'] is not None else '-':>8} | "
                  f"{r['completion_tokens']['min']}..{r['completion_tokens']['max']}")
    for peer, rows in payload["ratios_ours_over"].items():
        for level, row in rows.items():
            if row:
                print(f"ours vs {peer} C={level}: " + ", ".join(f"{k} {v:.2f}x" for k, v in row.items() if v))
    print(f"checks: {payload['checks']}")


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("output_tokens_per_s", None, "output tokens / s"), ("ttft_ms", "p50", "TTFT p50 (ms)"),
              ("itl_ms", "p50", "ITL p50 (ms)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.4))
    s, env = payload["settings"], payload["env"]
    for ax, (key, sub, label) in zip(axes, panels):
        for i, (name, result) in enumerate(payload["servers"].items()):
            pts = [(int(c), r[key] if sub is None else r[key][sub]) for c, r in result["levels"].items()
                   if r["completed"] and (r[key] if sub is None else r[key][sub]) is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", color=f"C{i}", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(s["levels"], [str(c) for c in s["levels"]])
        ax.set_xlabel("concurrent streaming requests")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(f"{payload['model']['name']} {s['dtype']} on {env['device']} ({s['threads']} server thread(s)): "
                 f"/v1/{s['endpoint']}, {s['max_tokens']} tokens per request", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="the 'smoke' preset (a tiny model; seconds per server)")
    p.add_argument("--gpu", action="store_true", help="the 'gpu-1.5b' preset on CUDA")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="default cpu (--smoke, --gpu: theirs)")
    p.add_argument("--servers", nargs="+", default=None,
                   help=f"subset of {' '.join(SERVERS)} (default the preset's: all; --gpu: no sequential transformers)")
    p.add_argument("--levels", type=int, nargs="+", default=None, help="concurrency levels (default the preset's)")
    p.add_argument("--requests", type=int, nargs="+", default=None,
                   help="requests per level (default max(8, 2C); --smoke: 2C; --gpu: max(4, C))")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--prompt-tokens", type=int, default=None)
    p.add_argument("--prompts", type=int, default=8, help="distinct prompts, cycled")
    p.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    p.add_argument("--threads", type=int, default=None, help="server torch threads (default: 1 on CPU, all on GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed requests per server before the levels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ours-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for `r1-megatron serve` (repeatable; e.g. --ours-arg=--max-batch-size=64)")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds a server may take to start")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: results/serve_<device>_<model>.json)")
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    name = args.preset or ("smoke" if args.smoke else "gpu-1.5b" if args.gpu else "cpu")
    preset = PRESETS[name]
    levels = args.levels or preset["levels"]
    requests = args.requests or [max(preset["min_requests"], preset["waves"] * c) for c in levels]
    threads = args.threads or (1 if preset["device"] == "cpu" else os.cpu_count())
    return Settings(preset=name, levels=levels, requests=requests,
                    max_tokens=args.max_tokens or preset["max_tokens"],
                    prompt_tokens=args.prompt_tokens or preset["prompt_tokens"], prompts=args.prompts,
                    endpoint=args.endpoint, dtype=preset["dtype"], device=preset["device"], threads=threads,
                    warmup=preset["warmup"] if args.warmup is None else args.warmup, servers=args.servers or list(preset["servers"]),
                    seed=args.seed)


def _terminate(signum, frame):  # SIGTERM unwinds like Ctrl-C, so every `with Server` kills its process group
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    try:
        s = settings_from(args)
    except ValueError as exc:
        raise SystemExit(f"bench_serve: {exc}")
    if s.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("bench_serve: --gpu: CUDA is not available here")
    signal.signal(signal.SIGTERM, _terminate)
    payload = run(s, argv, args.ours_arg, args.ready_timeout)
    print_table(payload)
    out = write_payload(payload, args.out or RESULTS_DIR / f"serve_{s.device}_{payload['model']['name']}.json")
    if not args.no_plot:
        plot(payload, out.with_suffix(".png"))
        print(f"wrote {out.with_suffix('.png')}")
    return payload


if __name__ == "__main__":
    result = main()
    sys.exit(0 if all("error" not in r for r in result["servers"].values()) else 1)
