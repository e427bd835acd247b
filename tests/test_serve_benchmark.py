"""benchmarks/bench_serve.py: its percentiles are numpy's; its tokenizer is a trained byte-level BPE whose EOS lies
outside the model; the load generator's figures are the ones a fake streaming server with known timings and
token counts produces (closed loop: never more than C requests in flight); a server's whole process group is gone
after it stops, even one that ignores SIGTERM; and a smoke run against real servers writes the report."""
import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

from tests.bench_scripts import load_bench

pytest.importorskip("openai", reason="the load generator's client: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_serve")


def test_percentile_is_numpys_linear(bench):
    import numpy as np

    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100):
        values = rng.exponential(size=n).tolist()
        for q in (0, 10, 50, 90, 100):
            assert bench.percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-12)
    with pytest.raises(ValueError, match="no values"):
        bench.percentile([], 50)


def test_tokenizer_is_trained_bpe_with_eos_outside_the_model(bench, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from r1_megatron.tokenizer import load_tokenizer

    corpus = [f.read_text() for f in bench.corpus_files()]
    counts = bench.write_checkpoint(tmp_path, bench.SMOKE_QWEN2, "fp32", 0, "cpu", corpus)
    vocab = bench.SMOKE_QWEN2["vocab_size"]
    assert counts == {"trained": vocab, "fillers": 0}
    hf, ours = AutoTokenizer.from_pretrained(str(tmp_path)), load_tokenizer(str(tmp_path))
    assert type(hf).__name__ == "Qwen2Tokenizer"  # transformers imposes Qwen2's pre-tokenizer on a qwen2 model
    assert hf.eos_token_id == ours.eos_token_id == vocab and hf.pad_token_id == 0
    text = "The engine streams 64 tokens in about 10 min — é × 2 →"
    ids = hf.encode(text, add_special_tokens=False)
    assert ids == ours.encode(text) == Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(text).ids
    assert hf.decode(ids) == text and max(ids) < vocab
    assert len(ids) < len(text.encode())  # merges: fewer tokens than bytes
    assert all(len(t.lstrip("Ġ")) == 1 for t in hf.convert_ids_to_tokens(ids) if any(c.isdigit() for c in t))
    prompt = hf.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    assert bench.EOS not in prompt and prompt.startswith(bench.TURN)
    assert hf(prompt)["input_ids"] == ours.encode(prompt)
    assert bench.write_tokenizer(tmp_path, 5000, corpus[:1])["fillers"] > 0  # a small corpus: fillers to the vocab
    assert Tokenizer.from_file(str(tmp_path / "tokenizer.json")).token_to_id(bench.EOS) == 5000
    with pytest.raises(ValueError, match="model_vocab 200"):
        bench.write_tokenizer(tmp_path, 200, corpus)
    prompts = bench.make_prompts(hf, corpus, 3, 24)
    assert len(set(prompts)) == 3 and all(len(hf.encode(p)) == 24 for p in prompts)
    with pytest.raises(ValueError, match="only 0 paragraphs of >= 100000 tokens"):
        bench.make_prompts(hf, corpus[:1], 1, 100000)


def _record(start, chunks, tokens, prompt=10, error=None):
    return {"start": start, "chunks": chunks, "end": chunks[-1] + 0.001 if chunks else start, "error": error,
            "usage": None if error else {"prompt_tokens": prompt, "completion_tokens": tokens},
            "finish_reason": "length"}


def test_summarise_figures(bench):
    records = [_record(0.0, [0.1, 0.2, 0.4], 3), _record(0.5, [0.7, 0.8, 0.9, 1.0], 5),
               _record(1.0, [], 0, error="APIError: boom")]
    r = bench.summarise(records, wall=2.0, max_tokens=3)
    assert (r["requests"], r["completed"]) == (3, 2)
    assert r["requests_per_s"] == 1.0 and r["output_tokens_per_s"] == 4.0
    assert r["ttft_ms"]["mean"] == pytest.approx(150.0) and r["ttft_ms"]["p50"] == pytest.approx(150.0)
    assert sorted(r["itl_ms"].values())[0] == pytest.approx(100.0)  # gaps 100, 200, 100, 100, 100
    assert r["itl_ms"]["mean"] == pytest.approx(120.0) and r["itl_ms"]["p90"] == pytest.approx(160.0)
    assert r["tpot_ms"]["p50"] == pytest.approx((150 + 75) / 2)  # (0.3 / 2, 0.3 / 4) s
    assert r["completion_tokens"] == {"min": 3, "max": 5, "total": 8} and r["all_max_tokens"] is False
    assert r["errors"] == ["APIError: boom"] and r["prompt_tokens"] == [10]


def test_ratios_and_checks(bench):
    smoke = bench.settings_from(bench._parse(["--smoke", "--servers", "ours", "transformers"]))

    def level(rps, ttft, tokens=4, prompt=16):
        return {"requests": 2, "completed": 2, "requests_per_s": rps, "output_tokens_per_s": 4 * rps,
                "ttft_ms": {"p50": ttft}, "itl_ms": {"p50": 2.0}, "all_max_tokens": tokens == 4,
                "prompt_tokens": [prompt]}

    servers = {"ours": {"levels": {"1": level(4.0, 10.0), "2": level(6.0, 10.0)}},
               "transformers": {"levels": {"1": level(2.0, 30.0), "2": level(3.0, 20.0, tokens=3)}}}
    got = bench.ratios(servers, [1, 2])["transformers"]
    assert got["1"] == {"requests_per_s": 2.0, "output_tokens_per_s": 2.0, "ttft_p50": 3.0, "itl_p50": 1.0}
    ok = bench.checks(servers, smoke)
    assert ok["ours_tokens_ok"] is True and ok["transformers_tokens_ok"] is False and ok["prompt_tokens_match"]
    servers["transformers"]["levels"]["1"]["prompt_tokens"] = [17]
    servers["ours"] = {"error": "RuntimeError: exited", "levels": {}}
    ok = bench.checks(servers, smoke)
    assert ok["ours_tokens_ok"] is None and ok["prompt_tokens_match"] is True  # only transformers ran
    assert bench.ratios(servers, [1, 2]) == {}
    with pytest.raises(ValueError, match="servers: unknown"):
        bench.settings_from(bench._parse(["--servers", "vllm"]))
    with pytest.raises(ValueError, match="requests: 1 counts for 2 levels"):
        bench.settings_from(bench._parse(["--levels", "1", "2", "--requests", "3"]))


def test_presets_and_server_commands(bench, tmp_path):
    cpu = bench.settings_from(bench._parse([]))
    assert (cpu.levels, cpu.requests, cpu.servers) == ([1, 8, 64], [8, 16, 128], list(bench.SERVERS))
    gpu = bench.settings_from(bench._parse(["--gpu"]))
    assert (gpu.device, gpu.dtype, gpu.requests, gpu.servers) == ("cuda", "bf16", [4, 8, 64], ["ours", "transformers-cb"])
    ours = bench.server_command("ours", tmp_path, 8123, gpu, ["--seed=3"])
    assert ours[1:4] == ["-m", "r1_megatron", "serve"] and ours[-1] == "--seed=3"
    flags = dict(zip(ours[4::2], ours[5::2]))
    assert flags == {"--model": str(tmp_path), "--host": "127.0.0.1", "--port": "8123", "--dtype": "bf16",
                     "--max-batch-size": "64", "--max-seq-len": str(128 + 128 + 32)}
    peer = bench.server_command("transformers-cb", tmp_path, 8124, gpu, ["--seed=3"])
    assert peer[1:5] == ["-m", "transformers.cli.transformers", "serve", str(tmp_path)]
    assert "--continuous-batching" in peer and "--seed=3" not in peer
    assert peer[peer.index("--dtype") + 1] == "bfloat16" and peer[peer.index("--device") + 1] == "cuda"
    assert "--continuous-batching" not in bench.server_command("transformers", tmp_path, 1, cpu, [])
    env = bench.server_env(cpu, "transformers")
    assert env["OMP_NUM_THREADS"] == "1" and str(bench.REPO) not in env["PYTHONPATH"].split(os.pathsep)
    assert bench.server_env(cpu, "ours")["PYTHONPATH"].split(os.pathsep)[0] == str(bench.REPO)


TTFT_S, GAP_S = 0.05, 0.02


async def fake_server(in_flight: dict):
    """A streaming OpenAI-like server: the first token TTFT_S after the request, then one chunk per GAP_S, the
    last chunk carrying two tokens (so max_tokens - 1 text chunks); usage in a last chunk; counts requests in
    flight."""

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        body = json.loads(await reader.readexactly(length))
        chat = b"/chat/" in head.split(b"\r\n")[0]
        in_flight["now"] += 1
        in_flight["max"] = max(in_flight["max"], in_flight["now"])
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")

        def send(text, finish=None, usage=None):
            choice = ({"index": 0, "delta": {"content": text}, "finish_reason": finish} if chat else
                      {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})
            chunk = {"id": "x", "object": "chat.completion.chunk" if chat else "text_completion", "created": 0,
                     "model": "fake", "choices": [] if usage else [choice], "usage": usage}
            writer.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        if chat:
            send("")  # the role chunk: no text, not a token
        n = body["max_tokens"]
        await asyncio.sleep(TTFT_S)
        for i in range(n - 1):
            if i:
                await asyncio.sleep(GAP_S)
            send("ab" if i == n - 2 else "a")
            await writer.drain()
        send("", finish="length")
        send("", usage={"prompt_tokens": len(body.get("prompt", "")), "completion_tokens": n, "total_tokens": n})
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()
        in_flight["now"] -= 1
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_load_generator_against_a_fake_server(bench, endpoint):
    async def go():
        in_flight = {"now": 0, "max": 0}
        server = await fake_server(in_flight)
        port = server.sockets[0].getsockname()[1]
        async with server:
            records, wall = await bench.run_level(f"http://127.0.0.1:{port}", "fake", endpoint, ["p1", "p22"],
                                                  max_tokens=5, concurrency=2, n_requests=5)
        return records, wall, in_flight

    records, wall, in_flight = asyncio.run(go())
    assert in_flight["max"] == 2  # closed loop: C workers, never more
    r = bench.summarise(records, wall, max_tokens=5)
    assert r["completed"] == 5 and r["all_max_tokens"] and r["errors"] == [], r["errors"]
    assert r["text_chunks_per_request"]["mean"] == 4  # 5 tokens, the last chunk carries two
    assert TTFT_S <= r["ttft_ms"]["p50"] / 1e3 < TTFT_S + 0.5
    assert GAP_S <= r["itl_ms"]["p50"] / 1e3 < GAP_S + 0.5
    assert r["tpot_ms"]["p50"] / 1e3 == pytest.approx(3 * GAP_S / 4, rel=0.5)  # 3 gaps over 4 token intervals
    assert wall >= 3 * (TTFT_S + 3 * GAP_S)  # 5 requests on 2 workers: 3 rounds
    if endpoint == "completions":
        assert r["prompt_tokens"] == [2, 3]  # requests cycle through the prompts


SERVER_SCRIPT = """
import http.server, json, signal, subprocess, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL stops it
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": "m"}]}).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = open(f"/proc/{pid}/stat").read() if os.path.exists(f"/proc/{pid}/stat") else ""
    return ") Z " not in stat  # a zombie awaiting its reaper is dead


def test_server_group_is_killed_even_when_it_ignores_sigterm(tmp_path):
    from server_process import Server, free_port  # benchmarks/ is on sys.path since load_bench

    port = free_port()
    cmd = [sys.executable, "-c", SERVER_SCRIPT, str(port)]
    with Server(cmd, dict(os.environ), tmp_path, tmp_path / "log", port, ready_timeout=30, grace_s=0.5) as srv:
        assert srv.model == "m" and srv.startup_s > 0
        child = int((tmp_path / "log").read_text().split()[0])
        assert _alive(child)
    assert srv.stopped_by == "SIGKILL" and srv.proc.returncode == -9
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    crash = [sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match="exited 3 before answering: no model here"):
        with Server(crash, dict(os.environ), tmp_path, tmp_path / "log2", free_port(), ready_timeout=30):
            pass


def test_smoke_run_against_the_servers(bench, tmp_path):
    """The whole script on the tiny model: transformers serve, and ours where `r1-megatron serve` exists."""
    pytest.importorskip("fastapi", reason="the servers: pip install -e .")
    servers = ["transformers"]
    if subprocess.run([sys.executable, "-c", "import r1_megatron.serving"], capture_output=True).returncode == 0:
        servers.insert(0, "ours")
    out = tmp_path / "serve.json"
    payload = bench.main(["--smoke", "--servers", *servers, "--no-plot", "--out", str(out)])
    assert json.loads(out.read_text()) == payload and "--smoke" in payload["command"]
    for name in servers:
        result = payload["servers"][name]
        assert "error" not in result, result.get("error")
        assert set(result["levels"]) == {"1", "2"} and result["stopped_by"] in ("SIGTERM", "SIGKILL", "exited")
        assert payload["checks"][f"{name}_tokens_ok"], result["levels"]
    assert payload["checks"]["prompt_tokens_match"]
    assert payload["env"]["cpu_count"] == os.cpu_count() and "load_average_end" in payload["env"]
    assert "TMP" in payload["servers"]["transformers"]["command"]
