"""lm-evaluation-harness against `r1-megatron serve`: a scripted end-to-end check of the OpenAI-compatible server.

Starts the server on a model directory, runs lm_eval's `local-completions` model (or `local-chat-completions`
with --apply_chat_template, --mode chat) on the tiny local task in benchmarks/lm_eval_task/ (no hub download),
then checks every response lm-eval recorded against transformers' greedy continuation of the same prompt, cut at
the task's stop strings (an independent reference: a harness/server mismatch in prompt handling, stop strings or
detokenization shows up there, not only in the score). Writes lm-eval's results, the exact commands and that
comparison as JSON, and exits 1 on a mismatch. The server is stopped at the end, whatever happens.

    python -c "from tests.models.hf_fixtures import qwen2_chat_dir; qwen2_chat_dir('/tmp/qwen2_chat')"
    python benchmarks/lm_eval_server_check.py --model /tmp/qwen2_chat [--mode chat] [--limit 12]
"""
from __future__ import annotations

import argparse
import glob
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TASK_DIR = Path(__file__).resolve().parent / "lm_eval_task"
TASK = "r1_tiny_sums"
RESULTS = Path(__file__).resolve().parent / "results" / "lm_eval_server_check.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="HF model directory (served with --model; the reference loads it with transformers)")
    parser.add_argument("--mode", choices=("completions", "chat"), default="completions",
                        help="lm_eval's local-completions, or local-chat-completions with the chat template")
    parser.add_argument("--limit", type=int, default=12, help="documents of the task to run (it has 12)")
    parser.add_argument("--num-concurrent", type=int, default=4, help="lm_eval's concurrent requests")
    parser.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for `r1-megatron serve` (repeatable), e.g. --server-arg=--max-seq-len=256")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for /health")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"summary JSON (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(model: str, port: int, name: str, extra: list[str]) -> list[str]:
    """fp32 (the reference's dtype, so greedy tokens can be compared); `extra` comes last and may override it."""
    return [sys.executable, "-m", "r1_megatron", "serve", "--model", model, "--host", "127.0.0.1",
            "--port", str(port), "--served-model-name", name, "--dtype", "fp32", *extra]


def wait_healthy(server: subprocess.Popen, port: int, timeout: float, log_path: Path) -> None:
    """Poll GET /health until 200; fail early (with the server's log tail) if the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode} before it was healthy:\n"
                               + log_path.read_text()[-4000:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not healthy after {timeout:.0f} s:\n" + log_path.read_text()[-4000:])


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its graceful shutdown), SIGKILL if it is still there after 30 s."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def lm_eval_command(args: argparse.Namespace, port: int, name: str, output: Path) -> list[str]:
    """`lm_eval run` on the local task. Completions: prompts go as text (tokenized_requests=False) and the model
    directory's tokenizer only gives lm-eval the eos string; chat: lm-eval sends messages, the server templates."""
    endpoint = "completions" if args.mode == "completions" else "chat/completions"
    model_args = f"base_url=http://127.0.0.1:{port}/v1/{endpoint},model={name},num_concurrent={args.num_concurrent}"
    if args.mode == "completions":
        model_args += f",tokenizer_backend=huggingface,tokenizer={args.model},tokenized_requests=False"
    command = [sys.executable, "-m", "lm_eval", "run",
               "--model", "local-completions" if args.mode == "completions" else "local-chat-completions",
               "--model_args", model_args, "--tasks", TASK, "--include_path", str(TASK_DIR),
               "--limit", str(args.limit), "--output_path", str(output), "--log_samples"]
    return command + (["--apply_chat_template"] if args.mode == "chat" else [])


def run_lm_eval(command: list[str], output: Path) -> tuple[dict, list[dict]]:
    """Run lm_eval where the task's relative data_files resolve; its results JSON and logged samples."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run(command, cwd=TASK_DIR, env=env, check=True)
    [results_path] = glob.glob(str(output / "**" / "results_*.json"), recursive=True)
    [samples_path] = glob.glob(str(output / "**" / f"samples_{TASK}_*.jsonl"), recursive=True)
    with open(samples_path) as f:
        samples = [json.loads(line) for line in f]
    return json.loads(Path(results_path).read_text()), sorted(samples, key=lambda s: s["doc_id"])


def reference_responses(model_dir: str, samples: list[dict], chat: bool) -> list[str]:
    """transformers' greedy continuation of each sample's prompt (chat: the tokenizer's template over lm-eval's
    messages), max_gen_toks tokens or to eos, specials skipped, cut at the first occurrence of each stop string."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    # tokenizer.json as written, as the server reads it (AutoTokenizer may swap in the model type's own
    # pre-tokenizer: transformers 5 gives a qwen2 directory Qwen2Tokenizer's digit-splitting regex)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = []
    for sample in samples:
        prompt, gen_kwargs = (sample["arguments"]["gen_args_0"][k] for k in ("arg_0", "arg_1"))
        if chat:  # lm-eval logs the messages it sent as its JsonChatStr, a 1-tuple of their JSON
            prompt = tokenizer.apply_chat_template(json.loads(prompt[0]), add_generation_prompt=True, tokenize=False)
        # as the server encodes: a completion prompt with the tokenizer's bos, a rendered template as it is
        ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=not chat)])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=gen_kwargs["max_gen_toks"], do_sample=False)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        for stop in gen_kwargs["until"]:
            text = text.split(stop)[0]
        texts.append(text)
    return texts


def compare(samples: list[dict], references: list[str]) -> list[dict]:
    return [{"doc_id": s["doc_id"], "prompt": s["arguments"]["gen_args_0"]["arg_0"], "response": s["resps"][0][0],
             "reference": ref, "target": s["target"], "exact_match": s["exact_match"],
             "matches_reference": s["resps"][0][0] == ref} for s, ref in zip(samples, references)]


def evaluate_served(args: argparse.Namespace, port: int, name: str, work: Path):
    """Start the server, run lm_eval against it, stop the server whatever happens (printing its log's tail when
    lm_eval fails). Returns (server command, lm_eval command, lm-eval results, logged samples)."""
    log_path = work / "server.log"
    server_cmd = serve_command(args.model, port, name, args.server_arg)
    eval_cmd = lm_eval_command(args, port, name, work / "lm_eval")
    with open(log_path, "w") as log:
        server = subprocess.Popen(server_cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(server, port, args.startup_timeout, log_path)
        return (server_cmd, eval_cmd, *run_lm_eval(eval_cmd, work / "lm_eval"))
    except subprocess.CalledProcessError:
        print("server log tail:\n" + log_path.read_text()[-4000:], file=sys.stderr)
        raise
    finally:
        stop_server(server)


def portable(command: list[str], work: Path) -> list[str]:
    """The command as recorded in the JSON: `python` for this interpreter, paths inside the repository relative
    to it, the temporary directory as TMP (so the file names nothing of the machine it ran on)."""
    repo, out = str(Path(__file__).resolve().parent.parent), []
    for arg in command:
        arg = "python" if arg == sys.executable else arg.replace(str(work), "TMP").replace(repo + os.sep, "")
        out.append(arg)
    return out


def main(argv=None) -> int:
    args, started = parse_args(argv), time.monotonic()
    port, name = args.port or free_port(), os.path.basename(os.path.normpath(args.model))
    with tempfile.TemporaryDirectory(prefix="lm_eval_check_") as work:
        server_cmd, eval_cmd, results, samples = evaluate_served(args, port, name, Path(work))
        server_cmd, eval_cmd = portable(server_cmd, Path(work)), portable(eval_cmd, Path(work))
    rows = compare(samples, reference_responses(args.model, samples, chat=args.mode == "chat"))
    summary = {"mode": args.mode, "model": name, "command": " ".join(portable([sys.executable, *sys.argv], Path(work))),
               "server_command": server_cmd, "lm_eval_command": eval_cmd,
               "lm_eval_results": results["results"], "n_samples": len(rows),
               "mismatches": sum(not r["matches_reference"] for r in rows), "wall_s": round(time.monotonic() - started),
               "versions": {p: importlib.metadata.version(p) for p in ("lm_eval", "transformers", "torch")},
               "samples": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("mode", "lm_eval_results", "n_samples", "mismatches")}, indent=2))
    return 1 if summary["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
