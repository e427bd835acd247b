"""Paged decode attention: the Triton kernel (interpreted) and the torch reference against a float64 loop that
concatenates each row's keys/values block by block; GQA/MQA/MLA shapes, block boundaries, splits, strides,
garbage past every row's end (NaN blocks and slots, out-of-range table entries), allocations, bad arguments."""
import dataclasses
import importlib
import math

import pytest
import torch
from kernel_test_inputs import allocation_recorder, rel_err

from r1_megatron.kernels import decode_attention, reference
from r1_megatron.kernels.backend import FORCE_ENV, Backend, select_backend
from r1_megatron.kernels.decode_attention_triton import MAX_SPLITS, choose_num_splits

decode_module = importlib.import_module("r1_megatron.kernels.decode_attention")  # the attribute is the function
TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}  # max error relative to max |gold|


@pytest.fixture(autouse=True)
def _triton_path():
    assert select_backend(torch.zeros(1)) is Backend.TRITON, "kernel tests must run the Triton interpreter"


@dataclasses.dataclass
class Paged:
    q: torch.Tensor  # [B, N, D]
    k: torch.Tensor  # [P, S, G, D]
    v: torch.Tensor  # [P, S, G, E]
    table: torch.Tensor  # int32 [B, M]
    lens: list[int]
    scale: float
    latent: bool  # MLA: v is a view of k's first E columns

    def args(self, dtype=None):
        """(q, k, v, table, lens, scale) in `dtype` (default: as made); v stays a view of k when latent."""
        q, k = (self.q, self.k) if dtype is None else (self.q.to(dtype), self.k.to(dtype))
        v = k[..., :self.v.shape[-1]] if self.latent else self.v if dtype is None else self.v.to(dtype)
        return q, k, v, self.table, torch.tensor(self.lens, dtype=torch.int32), self.scale


def make(lens, N, G, D, E, S, *, seed, mla=False):
    """Row b's blocks are scattered over a shuffled pool; the spare blocks and each row's slots past its length
    hold NaN, and its table entries past its blocks are garbage (random ids, −1, ids past the pool)."""
    g = torch.Generator().manual_seed(seed)
    need = [math.ceil(L / S) for L in lens]
    P, M = sum(need) + 3, max(need) + 2
    q = 2 * torch.randn(len(lens), N, D, generator=g)
    k = torch.randn(P, S, G, D, generator=g)
    v = k[..., :E] if mla else torch.randn(P, S, G, E, generator=g)
    table = torch.randint(0, P, (len(lens), M), generator=g, dtype=torch.int32)
    table[:, -1] = torch.tensor([-1, P + 1000], dtype=torch.int32).repeat(len(lens))[:len(lens)]
    physical = torch.randperm(P, generator=g).tolist()
    for b, (L, n_blocks) in enumerate(zip(lens, need)):
        row_blocks, physical = physical[:n_blocks], physical[n_blocks:]
        table[b, :n_blocks] = torch.tensor(row_blocks, dtype=torch.int32)
        if L % S:
            for cache in (k, v):
                cache[row_blocks[-1], L % S:] = float("nan")
    for cache in (k, v):
        cache[physical] = float("nan")
    return Paged(q, k, v, table, list(lens), 1 / math.sqrt(D), mla)


def loop_gold(q, k, v, table, lens, scale):
    """float64, one row and one head at a time: the row's keys are its blocks' tokens in table order."""
    S, G = k.shape[1], k.shape[2]
    B, N, _ = q.shape
    out = torch.zeros(B, N, v.shape[-1], dtype=torch.float64)
    for b, L in enumerate(lens):
        blocks = table[b, :math.ceil(L / S)].tolist()
        keys = torch.cat([k[blk] for blk in blocks])[:L].double()
        values = torch.cat([v[blk] for blk in blocks])[:L].double()
        for n in range(N):
            kv_head = n // (N // G)
            probs = torch.softmax(scale * keys[:, kv_head] @ q[b, n].double(), dim=0)
            out[b, n] = probs @ values[:, kv_head]
    return out


CASES = {  # lens, N, G, D, E, S, splits, mla
    "mha-block-edges": ([1, 15, 16, 17, 40], 4, 4, 32, 32, 16, None, False),
    "gqa4-odd-dims": ([1, 15, 16, 17, 33], 8, 2, 40, 24, 16, 3, False),
    "gqa8-one-split": ([7, 8, 9, 100], 16, 2, 64, 64, 8, 1, False),
    "mqa6-odd-block-empty-splits": ([1, 4, 5, 6, 23], 6, 1, 16, 48, 5, 7, False),
    "mqa32-two-head-tiles": ([1, 33], 32, 1, 16, 16, 16, 2, False),
    "long-one-split": ([4096, 1000, 1], 2, 1, 16, 16, 64, 1, False),
    "long-many-splits": ([4096, 1000, 1], 2, 1, 16, 16, 64, 8, False),
    "mla-latent": ([1, 16, 17, 50], 2, 1, 576, 512, 16, 2, True),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_loop_gold(case, dtype):
    lens, N, G, D, E, S, splits, mla = CASES[case]
    paged = make(lens, N, G, D, E, S, seed=len(case), mla=mla)
    args = paged.args(dtype)
    if mla:
        assert args[2].data_ptr() == args[1].data_ptr() and not args[2].is_contiguous()  # v: a strided view of k
    gold = loop_gold(*args[:4], lens, paged.scale)  # from the rounded inputs: only the kernel's error counts
    out = decode_attention(*args, num_splits=splits)
    assert out.dtype == dtype and out.shape == (len(lens), N, E)
    assert rel_err(out, gold) < TOL[dtype]


def test_fp16():
    paged = make([3, 16, 37], 8, 2, 32, 32, 16, seed=3)
    args = paged.args(torch.float16)
    assert rel_err(decode_attention(*args, num_splits=2), loop_gold(*args[:4], paged.lens, paged.scale)) < TOL[
        torch.float16]


@pytest.mark.parametrize("case", list(CASES))
def test_reference_matches_loop_gold(case):
    lens, N, G, D, E, S, _, mla = CASES[case]
    paged = make(lens, N, G, D, E, S, seed=len(case), mla=mla)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, TOL[torch.float32]), (torch.bfloat16, 5e-3)):
        args = paged.args(dtype)
        out = reference.decode_attention(*args)
        assert out.dtype == dtype and rel_err(out, loop_gold(*args[:4], lens, paged.scale)) < tol


def test_any_strides():
    """q a slice of a wider buffer, k/v stored head-major ([P, G, S, D] seen as [P, S, G, D]), table and lengths
    strided views: the kernel follows every stride and copies nothing."""
    paged = make([5, 33, 64], 8, 2, 32, 16, 16, seed=7)
    q_wide = torch.zeros(3, 8, 40)
    q_wide[..., :32] = paged.q
    k = paged.k.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    v = paged.v.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    table = torch.cat([paged.table, paged.table], dim=1)[:, :paged.table.shape[1]]
    lens = torch.tensor([[L, 0] for L in paged.lens], dtype=torch.int32)[:, 0]
    assert not (k.is_contiguous() or table.is_contiguous() or lens.is_contiguous())
    out = decode_attention(q_wide[..., :32], k, v, table, lens, paged.scale, num_splits=2)
    assert rel_err(out, loop_gold(paged.q, paged.k, paged.v, paged.table, paged.lens, paged.scale)) < 1e-5


def test_lengths_zero_and_past_the_table():
    """A row of length 0 (e.g. a CUDA-graph padding row) gives zeros; a length past M·S attends all M·S keys."""
    paged = make([40, 40], 4, 2, 16, 16, 8, seed=5)
    q, k, v, table, _, scale = paged.args()
    table = table[:, :5]  # exactly the rows' 5 blocks of 8: M·S = 40
    gold = loop_gold(q, k, v, table, [1, 40], scale)
    for fn in (decode_attention, reference.decode_attention):
        out = fn(q, k, v, table, torch.tensor([0, 45], dtype=torch.int32), scale)
        assert torch.equal(out[0], torch.zeros_like(out[0])) and rel_err(out[1], gold[1]) < 1e-5


def test_default_splits_and_the_torch_fallback(monkeypatch):
    paged = make([300, 2, 129], 4, 1, 16, 16, 16, seed=11)
    args = paged.args()
    gold = loop_gold(*args[:4], paged.lens, paged.scale)
    assert rel_err(decode_attention(*args), gold) < 1e-5
    monkeypatch.setenv(FORCE_ENV, "torch")
    monkeypatch.setattr(decode_module, "triton_module", lambda name: pytest.fail(f"imported {name}"))
    assert torch.equal(decode_attention(*args), reference.decode_attention(*args))


def test_choose_num_splits_from_static_sizes():
    sms = 132
    assert choose_num_splits(1, 1, 32768, sms) == MAX_SPLITS  # one row: as many splits as allowed
    assert choose_num_splits(8, 2, 32768, sms) == 17  # 8 · 2 · 17 ≥ 2 · 132 programs
    assert choose_num_splits(1, 1, 600, sms) == 3  # no split shorter than 256 keys of the widest row
    assert choose_num_splits(256, 2, 32768, sms) == 1  # the batch alone fills the GPU
    assert choose_num_splits(4, 1, 1, sms) == 1


def test_triton_allocates_only_output_and_split_partials(monkeypatch):
    Allocations = allocation_recorder(monkeypatch, record=lambda t: (t.numel(), t.dtype))
    paged = make([512, 300], 2, 1, 16, 16, 16, seed=2)
    args = paged.args(torch.bfloat16)
    B, N, E, splits = 2, 2, 16, 4
    with Allocations() as allocs:
        decode_attention(*args, num_splits=splits)
    assert sorted(allocs.records, key=str) == sorted(
        [(B * N * E, torch.bfloat16), (B * N * splits * E, torch.float32), (B * N * splits, torch.float32)], key=str)
    assert max(n for n, _ in allocs.records) < 300 * E  # far below one row's cached prefix


def _bad(**changes):
    paged = make([3, 9], 4, 2, 16, 8, 4, seed=1)
    q, k, v, table, lens, scale = paged.args()
    kwargs = dict(q_BND=q, k_cache_PSGD=k, v_cache_PSGE=v, block_table_BM=table, seq_lens_B=lens,
                  softmax_scale=scale)
    kwargs.update({name: change(kwargs[name]) if callable(change) else change for name, change in changes.items()})
    return kwargs


@pytest.mark.parametrize("changes,match", [
    (dict(q_BND=lambda q: q[0]), "q_BND"),
    (dict(q_BND=lambda q: q.double()), "q_BND"),
    (dict(q_BND=lambda q: q[:, :3]), "q_BND: N=3 query heads is not a multiple of the caches' G=2"),
    (dict(k_cache_PSGD=lambda k: k.bfloat16()), "k_cache_PSGD"),
    (dict(k_cache_PSGD=lambda k: k[..., :8]), "k_cache_PSGD: head dim 8"),
    (dict(v_cache_PSGE=lambda v: v[:, :2]), "v_cache_PSGE"),
    (dict(block_table_BM=lambda t: t.long()), "block_table_BM"),
    (dict(block_table_BM=lambda t: t[:1]), "block_table_BM"),
    (dict(seq_lens_B=lambda s: s[:, None]), "seq_lens_B"),
    (dict(softmax_scale=float("nan")), "softmax_scale"),
    (dict(num_splits=0), "num_splits=0"),
])
def test_bad_arguments_name_the_argument(changes, match):
    with pytest.raises(ValueError, match=match):
        decode_attention(**_bad(**changes))
