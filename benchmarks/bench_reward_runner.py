"""Throughput of the reward runner (samples/s) on R1-style math completions, against scoring in this process.

    python benchmarks/bench_reward_runner.py                      # 512 completions, 2 workers
    python benchmarks/bench_reward_runner.py --n 2048 --workers 4

Completions are 64 prompts x 8 samples (so the gold-answer parse cache behaves as in a GRPO step): a think
block of ~1 kB, then an answer that is right, equivalent in another form, or wrong. Each configuration is scored
``--repeats`` times on a warm pool; the best wall time is reported (the least disturbed by other load on a
shared machine), with this process's CPU time per sample (the runner's own overhead; the workers' is not in
it). "in-process" is one loop over the same calls in this process: the floor of one worker, without IPC.
"format" alone costs microseconds, so its rate is the runner's per-sample overhead.
"""
from __future__ import annotations

import argparse
import random
import time

from r1_megatron.rewards import RewardConfig, RewardRunner, get_reward

ANSWERS = [("\\frac{3}{4}", "0.75"), ("2\\sqrt{2}", "\\sqrt{8}"), ("x^2-1", "(x-1)(x+1)"), ("12", "12.0"),
           ("\\pi/2", "\\frac{\\pi}{2}"), ("(1,2)", "(1, 2)")]


def math_batch(n: int, seed: int = 0) -> tuple[list[str], list[dict]]:
    rng = random.Random(seed)
    completions, samples = [], []
    for i in range(n):
        prompt = i // 8
        gold, equivalent = (f"{prompt}+{a}" for a in ANSWERS[prompt % len(ANSWERS)])
        answer = rng.choice([gold, equivalent, "7", "\\frac{1}{3}"])
        think = " ".join(rng.choice(["so", "then", "we", "get", "x", "=", "2", "+", "hence"]) for _ in range(200))
        completions.append(f"<think>{think}</think> <answer>\\boxed{{{answer}}}</answer>")
        samples.append({"answer": gold, "tests": None, "finish_reason": "stop"})
    return completions, samples


def in_process_s(weights, completions, samples) -> float:
    fns = [get_reward(name) for name in weights]
    start = time.monotonic()
    for c, s in zip(completions, samples):
        for fn in fns:
            fn(c, s)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    completions, samples = math_batch(args.n)
    for weights in ({"format": 1.0}, {"math_accuracy": 1.0}, {"math_accuracy": 1.0, "format": 1.0}):
        with RewardRunner(RewardConfig(weights=weights, num_workers=args.workers)) as runner:
            runner.score(completions, samples)  # warm: sympy caches, gold parses
            times, cpu_s = [], time.process_time()
            for _ in range(args.repeats):
                times.append(runner.score(completions, samples).wall_s)
            cpu_s = time.process_time() - cpu_s
        assert runner.replacements == 0
        local_s = min(in_process_s(weights, completions, samples) for _ in range(2))
        print(f"{'+'.join(weights):22s} n={args.n} workers={args.workers}: {args.n / min(times):8.0f} samples/s "
              f"(best of {args.repeats}), this process {cpu_s / args.repeats / args.n * 1e6:5.0f} us CPU/sample; "
              f"in-process 1 core: {args.n / local_s:.0f} samples/s")


if __name__ == "__main__":
    main()
