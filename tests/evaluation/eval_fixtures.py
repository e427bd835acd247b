"""A tiny HF model and a small math benchmark of our own for end-to-end `r1-megatron eval` tests."""
from __future__ import annotations

import json
from pathlib import Path

BENCHMARK_YAML = """benchmarks:
  sums:
    path: sums.jsonl
    scorer: math
    fields: {question: problem, answer: answer, id: key}
    format: think_format
    k: 4
    pass_ks: [2, 4]
    cons_k: 4
"""


def write_benchmark(directory: Path, questions: int = 6) -> Path:
    """sums.yaml + sums.jsonl ("What is a + b?" with its sum) in `directory`; returns the YAML's path."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"key": f"s{i}", "problem": f"What is {i} + {2 * i + 1}?", "answer": str(3 * i + 1)})
             for i in range(questions)]
    (directory / "sums.jsonl").write_text("\n".join(lines) + "\n")
    (directory / "sums.yaml").write_text(BENCHMARK_YAML)
    return directory / "sums.yaml"


def eval_args(model: Path, bench: Path, out: Path, *extra: str) -> list[str]:
    """`r1-megatron eval` arguments for the tiny benchmark: k 4, 12 new tokens, fp32, one scoring process."""
    return ["eval", "--model", str(model), "--out", str(out), f"benchmarks.file={bench}", "sampling.k=4",
            "sampling.max_new_tokens=12", "model.dtype=fp32", "rewards.num_workers=1", "progress=false", *extra]


def samples_of(out: Path) -> list[dict]:
    """The sample records of OUT/samples.jsonl, in (benchmark, question, sample) order."""
    from r1_megatron.evaluation.sample_store import read_samples

    _, records = read_samples(out / "samples.jsonl")
    return sorted(records, key=lambda r: (r["benchmark"], r["question"], r["sample"]))


def results_of(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())["results"]
