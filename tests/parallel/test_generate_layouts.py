"""Generation at TP2, EP2 and TP2+EP2 gives TP1's greedy tokens and seeded samples, with MLA's latent cache and
with the expanded one; EP ranks with unequal work stay in lockstep; the model (its sequence-parallel setting, its
logits) is restored after generation."""
import pytest

from r1_megatron.models import load_hf
from tests.models import hf_fixtures
from tests.parallel.launch import torchrun
from tests.parallel.worker import GEN_SHARES, generate_requests


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
            for kind, tokens in got["tokens"].items():
                want = {k: v for k, v in reference[ckpt][kind].items() if int(k.split("/")[0]) in share}
                assert tokens == want, (run, rank, kind)


def test_pipeline_parallel_generation_is_refused(workdir):
    results = torchrun("generate_pp", workdir, nproc=2, extra=("qwen2",))
    for result in results:
        assert "pipeline parallelism (pp > 1) is not supported" in result["error"]
