"""CPU time to turn one step's rollout into training micro-batches (rollout_batch.py), padded and packed.

    python benchmarks/bench_rollout_batch.py                  # 64 samples of ~1k tokens
    python benchmarks/bench_rollout_batch.py --samples 512 --tokens 4096

Prompts are 10-30% of each sequence, completions the rest; a quarter are truncated (mask_truncated=True).
Padded: micro_batch_size 8, T = the longest sequence. Packed: 2 rows of 2 x tokens positions per micro-batch.
The best of --repeats runs is reported (the least disturbed by other load on a shared machine).
"""
from __future__ import annotations

import argparse
import random
import time

from r1_megatron.grpo.rollout_batch import RolloutSample, micro_batches, packed_micro_batches
from r1_megatron.kernels.options import LossAgg


def rollout(samples: int, tokens: int, seed: int = 0) -> list[RolloutSample]:
    rng = random.Random(seed)
    out = []
    for i in range(samples):
        length = rng.randrange(tokens // 2, tokens + 1)
        prompt = int(length * rng.uniform(0.1, 0.3))
        completion = [rng.randrange(32000) for _ in range(length - prompt)]
        out.append(RolloutSample([rng.randrange(32000) for _ in range(prompt)], completion,
                                 [-rng.random() for _ in completion], rng.random(), rng.gauss(0, 1),
                                 truncated=i % 4 == 0, prompt_index=i // 8))
    return out


def best_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    samples = rollout(args.samples, args.tokens)
    seq_len = max(len(s.prompt_ids) + len(s.completion_ids) - 1 for s in samples)
    cases = {
        "padded": lambda: micro_batches(samples, 8, seq_len, pad_id=0, mask_truncated=True),
        "packed": lambda: packed_micro_batches(samples, 2, 2 * args.tokens, pad_id=0, mask_truncated=True,
                                               loss_agg=LossAgg.SEQ_MEAN_TOKEN_MEAN, norm_length=args.tokens),
    }
    tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    for name, fn in cases.items():
        print(f"{name}: {args.samples} samples, {tokens} tokens: {best_ms(fn, args.repeats):7.2f} ms "
              f"(best of {args.repeats})")


if __name__ == "__main__":
    main()
