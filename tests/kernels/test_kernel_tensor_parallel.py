"""TP=2 over gloo (two spawned processes, plain torch.distributed): vocab-parallel grpo_loss, token_logprobs and
cross_entropy equal TP=1 in loss, stats and the gathered gradient; one collective in forward, none in backward.
All cases run in one launch (see kernel_tp_worker.CASES, CE_CASES) to pay the process start-up once."""
import torch.multiprocessing as mp
from kernel_tp_worker import run


def test_tp2_equals_tp1(tmp_path):
    mp.start_processes(run, args=(2, str(tmp_path / "rendezvous")), nprocs=2, start_method="spawn", join=True)
