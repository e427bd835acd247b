"""Routing replay at EP2 (each rank routes its own tokens), TP2 (sequence parallelism: each TP rank routes its
chunk of the training forward's tokens) and PP2 (each stage its own layers), in bf16: the replayed training
forward routes every recorded token to exactly the experts the rollout used."""
import pytest

from tests.models import hf_fixtures
from tests.parallel.launch import torchrun


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    hf_fixtures.deepseek_v3(num_hidden_layers=4).save_pretrained(root / "ckpts" / "dsv3")
    return root


def test_replay_routes_as_the_rollout_at_ep2_tp2_pp2(workdir):
    layouts = ("ep2", "tp2", "pp2")
    results = torchrun("replay", workdir, nproc=2, timeout=300, extra=(",".join(layouts),))
    for layout in layouts:
        for rank, result in enumerate(results):
            got = result[layout]
            # 3 MoE layers (the first of 4 is dense); at PP2 stage 0 has layers 1-2, stage 1 layers 3-4
            assert got["layers"] == ([1, 2][rank] if layout == "pp2" else 3), (layout, rank)
            assert got["router_calls"] == 2 * got["layers"], (layout, rank)  # 8 samples: 2 micro-batches of 4
            assert got["known"] > 0 and got["same"] == got["known"], (layout, rank, got)
