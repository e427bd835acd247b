"""Body of the TP=2 vocab-parallel sampling test: run by torchrun (gloo), one process per rank, as
`vocab_parallel_worker.py OUT_DIR`; rank r writes OUT_DIR/rank{r}.json with its tokens and logprobs per backend.

Both ranks build the same batch and logits (`inputs`), keep their vocab shard of Megatron's padded layout and
call sample_vocab_parallel, with the Triton kernels (through the interpreter) and with the torch reference."""
from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from r1_megatron.kernels.backend import FORCE_ENV
from r1_megatron.rollout import SamplingBatch, SamplingParams
from r1_megatron.rollout.vocab_parallel_sampling import sample_vocab_parallel

VOCAB, V_LOCAL = 75, 40  # padded to 2 x 40 as Megatron would: rank 1 holds 5 padding columns
ROWS = [SamplingParams(), SamplingParams(temperature=0), SamplingParams(temperature=0.6, top_p=0.95),
        SamplingParams(top_k=4), SamplingParams(temperature=1.3, top_k=6, top_p=0.8), SamplingParams(temperature=2.0)]


def inputs() -> tuple[SamplingBatch, torch.Tensor]:
    """(batch, full-vocabulary bf16 logits [B, VOCAB])."""
    g = torch.Generator().manual_seed(0)
    batch = SamplingBatch.from_rows(ROWS, torch.randint(-2**62, 2**62, (len(ROWS),), generator=g).tolist(),
                                    list(range(len(ROWS))))
    return batch, (3 * torch.randn(len(ROWS), VOCAB, generator=g)).to(torch.bfloat16)


def main(out_dir: Path) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank = dist.get_rank()
    batch, logits_BV = inputs()
    padded_BV = torch.cat([logits_BV, torch.full((len(ROWS), 2 * V_LOCAL - VOCAB), 1e4, dtype=logits_BV.dtype)], 1)
    local_BV = padded_BV[:, rank * V_LOCAL:(rank + 1) * V_LOCAL]
    results = {}
    for backend in ("triton", "torch"):
        os.environ[FORCE_ENV] = backend
        out = sample_vocab_parallel(local_BV, batch, VOCAB, dist.group.WORLD)
        results[backend] = {"tokens": out.tokens_B.tolist(), "logprobs": out.logprobs_B.tolist()}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
