"""Generation at TP2, EP2, TP2+EP2, PP2 and PP2+EP2 gives TP1's greedy tokens and seeded samples, with MLA's latent
cache and with the expanded one; EP ranks with unequal work stay in lockstep; the model (its sequence-parallel
setting, its logits) is restored after generation."""
import pytest

from r1_megatron.models import load_hf
from tests.models import hf_fixtures
from tests.parallel.launch import torchrun
from tests.parallel.worker import GEN_SHARES, PP_ENGINE, generate_requests


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    for name, hf in {"dsv3": hf_fixtures.deepseek_v3(num_hidden_layers=4), "qwen2": hf_fixtures.qwen2()}.items():
        hf.save_pretrained(root / "ckpts" / name)
    return root


def test_tp_and_ep_generate_what_one_process_generates(workdir):
    # MLA/MoE at TP2 always use SP; dsv3 generates with MLA's latent cache (the default), and once with the
    # expanded per-head cache at TP2, where each rank caches its own heads' keys and values
    runs = ["tp2:dsv3", "ep2:dsv3", "tp2ep2:dsv3", "tp2:dsv3:expanded", "tp2sp:qwen2"]
    results = torchrun("generate", workdir, nproc=2, extra=(",".join(runs),))
    reference = {ckpt: generate_requests(load_hf(workdir / "ckpts" / ckpt)) for ckpt in ("dsv3", "qwen2")}
    for run in runs:
        layout, ckpt, *_ = run.split(":")
        dp_size = 2 if layout == "ep2" else 1  # EP2 alone on 2 ranks: two data-parallel replicas of the dense part
        for rank, result in enumerate(results):
            got = result[run]
            assert got["logits_unchanged"], (run, rank)
            assert got["sp"][0] == got["sp"][1] == (layout != "ep2"), (run, rank)  # SP on at TP2, and restored
            share = GEN_SHARES[dp_size][rank % dp_size]
            for kind in ("greedy", "sampled"):
                want = {k: v for k, v in reference[ckpt][kind].items() if int(k.split("/")[0]) in share}
                assert got["tokens"][kind] == want, (run, rank, kind)
            _check_requests(got["tokens"]["requests"], reference[ckpt]["requests"], (run, rank))


def test_pp_generates_what_one_process_generates(workdir):
    """PP2, and PP2 with EP2 on 4 ranks (DP ranks with unequal work: idle forwards in lockstep), with a pool so
    small that sequences are preempted and recomputed, prompts prefilled in chunks, steps cut into 2 or 3
    micro-batches: every stage returns one process's greedy tokens and seeded samples."""
    reference = {ckpt: generate_requests(load_hf(workdir / "ckpts" / ckpt), **PP_ENGINE) for ckpt in ("qwen2", "dsv3")}
    assert all(r["preemptions"] > 0 for r in reference.values())  # the small pool did preempt
    # ~20 s each: a stage left waiting on its peers (a lockstep bug) fails in 4 minutes, its processes killed
    launches = {"pp2": torchrun("generate_pp", workdir, nproc=2, timeout=240, extra=("pp2", "qwen2,dsv3")),
                "pp2ep2": torchrun("generate_pp", workdir, nproc=4, timeout=240, extra=("pp2ep2", "dsv3"))}
    for layout, results in launches.items():
        dp_size = 2 if layout == "pp2ep2" else 1  # ranks 0, 1: stage 0 of two pipelines; ranks 2, 3: stage 1
        for rank, result in enumerate(results):
            share = GEN_SHARES[dp_size][rank % dp_size]
            for ckpt in ("qwen2", "dsv3") if layout == "pp2" else ("dsv3",):
                for micro_batches, got in result[ckpt].items():
                    for kind in ("greedy", "sampled"):
                        want = {k: v for k, v in reference[ckpt][kind].items() if int(k.split("/")[0]) in share}
                        assert got[kind] == want, (layout, ckpt, rank, micro_batches, kind)
                    _check_requests(got["requests"], reference[ckpt]["requests"], (layout, ckpt, rank, micro_batches))
            error_type, message = result["error"]
            assert error_type == "ValueError" and "pipeline-parallel ranks passed different prompts" in message, result
        # each stage sizes the pool from its own layers and free memory; a pipeline's stages take the smallest
        for first, last in zip(results[:dp_size], results[dp_size:]):
            assert first["num_blocks"] == last["num_blocks"], layout


def _check_requests(got: dict, want: dict, where) -> None:
    """The request API (add_request/step/abort with top logprobs): one process's tokens and top ids, and its
    top logprobs to fp32 rounding (TP sums the shards' log-sum-exps in another order)."""
    assert got.keys() == want.keys() and len(got["0/1"]["tokens"]) == 2, where  # "0/1" aborted after two steps
    for key, rec in got.items():
        assert rec["tokens"] == want[key]["tokens"] and rec["top_ids"] == want[key]["top_ids"], (where, key)
        flat = [lp for top in rec["top_lp"] for lp in top]
        assert pytest.approx([lp for top in want[key]["top_lp"] for lp in top], abs=1e-4) == flat, (where, key)
