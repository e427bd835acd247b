"""Vocab-parallel sampling, single process: 2-4 simulated tensor-parallel shards (one thread each, with an
all-gather over a barrier) draw the full-vocabulary sampler's tokens bit for bit and its logprobs, with the
collectives the module docstring promises. Megatron's padded columns hold huge logits that must never win."""
import threading

import pytest
import torch

from r1_megatron.rollout import SamplingBatch, SamplingParams
from r1_megatron.rollout.sampler import truncation_threshold_B
from r1_megatron.rollout.vocab_parallel_sampling import _thresholds, sample_vocab_shard

ROWS = [SamplingParams(temperature=1.0), SamplingParams(temperature=0.0), SamplingParams(temperature=0.6, top_p=0.95),
        SamplingParams(temperature=1.0, top_k=5), SamplingParams(temperature=1.3, top_k=3, top_p=0.7),
        SamplingParams(temperature=0.0, top_k=2, top_p=0.5), SamplingParams(temperature=0.8, top_k=1),
        SamplingParams(temperature=2.0, top_k=10**6), SamplingParams(temperature=0.7, top_k=40)]


class ThreadShards:
    """P threads standing in for P ranks: all_gather(rank) returns that rank's collective, which stacks every
    rank's tensor once all have arrived (and counts the calls)."""

    def __init__(self, size: int):
        self.size, self.calls = size, 0
        self._barrier = threading.Barrier(size)
        self._slots: list = [None] * size

    def all_gather(self, rank: int):
        def gather(t: torch.Tensor) -> torch.Tensor:
            self._slots[rank] = t
            self._barrier.wait()
            out = torch.stack(self._slots)
            if rank == 0:
                self.calls += 1
            self._barrier.wait()  # nobody overwrites a slot before everyone has read them
            return out
        return gather

    def run(self, fn):
        """fn(rank, all_gather) in every thread; returns the results by rank, re-raising a thread's error."""
        results, errors = [None] * self.size, []

        def body(rank):
            try:
                results[rank] = fn(rank, self.all_gather(rank))
            except BaseException as exc:  # noqa: BLE001 (re-raised in the caller)
                errors.append(exc)
                self._barrier.abort()

        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        if errors:
            raise errors[0]
        return results


def _shard_run(logits_BV, batch, tp, pad_to=None):
    """Split the vocab into tp equal shards padded like Megatron (huge logits in the padding); every rank's output."""
    B, V = logits_BV.shape
    v_local = -(-(pad_to or V) // tp)
    padded_BV = torch.cat([logits_BV, torch.full((B, v_local * tp - V), 1e4, dtype=logits_BV.dtype)], dim=1)
    shards = ThreadShards(tp)
    outs = shards.run(lambda rank, gather: sample_vocab_shard(padded_BV[:, rank * v_local:(rank + 1) * v_local], batch,
                                                              rank * v_local, V, gather))
    return outs, shards.calls


def _batch(rows, seed):
    g = torch.Generator().manual_seed(seed)
    return SamplingBatch.from_rows(rows, torch.randint(-2**62, 2**62, (len(rows),), generator=g).tolist(),
                                   torch.randint(0, 2**40, (len(rows),), generator=g).tolist())


@pytest.mark.parametrize("tp", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shards_draw_the_full_vocabulary_tokens(tp, dtype):
    """bf16 logits of scale 2 over 301 ids tie often, at the top-k boundary too (the union must keep ties)."""
    batch = _batch(ROWS * 2, seed=tp)
    logits_BV = (2 * torch.randn(len(ROWS) * 2, 301, generator=torch.Generator().manual_seed(tp))).to(dtype)
    full = batch.sample(logits_BV)
    outs, calls = _shard_run(logits_BV, batch, tp)
    assert calls == 3  # top-k rows, top-p rows, partials
    for out in outs:
        assert torch.equal(out.tokens_B, full.tokens_B)
        torch.testing.assert_close(out.logprobs_B, full.logprobs_B, rtol=0, atol=1e-6)


def test_a_shard_of_padding_only_and_ties_at_the_top_k_boundary():
    rows = [SamplingParams(top_k=2), SamplingParams(top_k=3), SamplingParams(top_k=9), SamplingParams()]
    logits_BV = torch.tensor([[0.0, 3.0, 1.0, 3.0, 1.0, 1.0, 0.5, 1.0, 2.0, 0.0]] * 4)
    batch = _batch(rows, seed=5)
    full = batch.sample(logits_BV)
    outs, calls = _shard_run(logits_BV, batch, 3, pad_to=16)  # V_local 6: shard 2 holds only padding
    assert calls == 2  # top-k rows and partials: no row has top-p
    for out in outs:
        assert torch.equal(out.tokens_B, full.tokens_B)
        torch.testing.assert_close(out.logprobs_B, full.logprobs_B, rtol=0, atol=1e-6)
    assert full.tokens_B[0] in (1, 3)  # top-2 keeps exactly the tied 3.0s


@pytest.mark.parametrize("tp", [2, 4])
def test_thresholds_keep_the_full_vocabulary_sets(tp):
    """Each sampled truncating row keeps exactly the full-vocabulary set (bf16: many ties at the boundaries)."""
    g = torch.Generator().manual_seed(10 + tp)
    rows = [SamplingParams(top_k=int(k), top_p=[1.0, 0.9, 0.5][i % 3]) for i, k in
            enumerate(torch.randint(1, 60, (24,), generator=g))]
    batch = _batch(rows, seed=tp)
    logits_BV = (2 * torch.randn(24, 203, generator=g)).to(torch.bfloat16)
    # rows whose top k all lie in the first or the last shard: a shard must contribute up to k candidates
    logits_BV[::4] = logits_BV[::4].sort(dim=1, descending=True).values
    logits_BV[1::4] = logits_BV[1::4].sort(dim=1).values
    v_local = -(-203 // tp)
    padded_BV = torch.cat([logits_BV, torch.full((24, v_local * tp - 203), 1e4, dtype=torch.bfloat16)], dim=1)
    taus = ThreadShards(tp).run(lambda rank, gather: _thresholds(
        padded_BV[:, rank * v_local:(rank + 1) * v_local], batch, min(v_local, 203 - rank * v_local), 203, gather))
    full_tau_B = truncation_threshold_B(logits_BV, batch.temperature_B, batch.top_k_B, batch.top_p_B)
    for tau_B in taus:
        assert torch.equal(logits_BV >= tau_B[:, None], logits_BV >= full_tau_B[:, None])


def test_untruncated_batches_use_one_collective():
    batch = _batch([SamplingParams(), SamplingParams(temperature=0.0, top_p=0.5), SamplingParams(temperature=0.3)], 6)
    logits_BV = torch.randn(3, 64, generator=torch.Generator().manual_seed(6))
    full = batch.sample(logits_BV)
    outs, calls = _shard_run(logits_BV, batch, 2)
    assert calls == 1  # a greedy row never needs a threshold
    assert all(torch.equal(out.tokens_B, full.tokens_B) for out in outs)


def test_a_truncating_batch_without_host_params_is_refused():
    batch = _batch([SamplingParams(top_k=3)], seed=7)
    bare = SamplingBatch(batch.temperature_B, batch.seeds_B, batch.steps_B, batch.top_k_B)
    with pytest.raises(ValueError, match="SamplingBatch.from_rows"):
        sample_vocab_shard(torch.randn(1, 8), bare, 0, 8, lambda t: t[None])
