"""TP=2 under torchrun (gloo): both ranks sample_vocab_parallel from their vocab shards and get the tokens of the
full-vocabulary sampler, bit for bit, and its logprobs; Triton (interpreted) and torch backends both."""
import json
import sys
from pathlib import Path

import torch

from tests.parallel.launch import run_to_end

from .vocab_parallel_worker import inputs

WORKER = Path(__file__).resolve().parent / "vocab_parallel_worker.py"


def test_tp2_shards_sample_the_full_vocabulary_tokens(tmp_path):
    run_to_end([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER),
                str(tmp_path)], timeout=300)
    batch, logits_BV = inputs()
    full = batch.sample(logits_BV)
    for rank in range(2):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for backend, out in results.items():
            assert out["tokens"] == full.tokens_B.tolist(), (rank, backend)
            torch.testing.assert_close(torch.tensor(out["logprobs"]), full.logprobs_B, rtol=0, atol=1e-6)
