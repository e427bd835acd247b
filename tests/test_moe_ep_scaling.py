"""benchmarks/moe_ep_scaling.py and its communication model: the formulas against hand-worked values, and one
torchrun launch at world 4 (gloo) sweeping EP 1, 2, 4 with both dispatchers, whose counted bytes must equal the
formula exactly on every rank."""
import json
import sys

import pytest

from tests.parallel.launch import ROOT, run_to_end

sys.path.insert(0, str(ROOT / "benchmarks"))

import moe_comm_model as cm  # noqa: E402
from moe_ep_scaling import parse_args, tokens_per_dp_rank  # noqa: E402


def test_alltoall_bytes_hand_worked():
    # 2 EP ranks, 4 experts (rank 0 holds 0-1), H 2, 2-byte dtype: rank 0 sends pairs to experts 2, 3 (2 + 2 = 4)
    # and receives rank 1's pairs for experts 0, 1 (1 + 4 = 5); a token row is 4 B, a prob 4 B, a count 8 B.
    got = cm.alltoall_layer_bytes([[3, 1, 2, 2], [1, 4, 1, 1]], index=0, hidden=2, dtype_bytes=2)
    assert got == {"metadata": (32, 32), "dispatch": (4 * 8, 5 * 8), "combine": (5 * 4, 4 * 4),
                   "backward": (4 * 4 + 5 * 8, 5 * 4 + 4 * 8)}
    assert cm.alltoall_layer_bytes([[3, 1]], index=0, hidden=2, dtype_bytes=2)["dispatch"] == (0, 0)


def test_allgather_bytes_hand_worked():
    # T 3, E 4, EP 2, H 2, bf16: map 3·4·1 + probs 3·4·4 + tokens 3·2·2 = 72; combine fp32 3·2·4 = 24;
    # backward fp32 grads 24 + token grads 12 + probs grads 48 = 84
    got = cm.allgather_layer_bytes(tokens=3, num_experts=4, ep=2, hidden=2, dtype_bytes=2)
    assert got == {"metadata": (0, 0), "dispatch": (72, 72), "combine": (24, 24), "backward": (84, 84)}


def test_uniform_and_node_limited_formulas():
    assert cm.uniform_bytes_per_token(7168, 8, 64, 2) == 225792  # 7168·8·63/64·2·2
    assert cm.expected_nodes_reached(8, 8, 4) == pytest.approx(4.0)  # DeepSeek-V3's M = 4 on 8 nodes
    assert cm.expected_nodes_reached(2, 4, 1) == pytest.approx(1.0)
    assert cm.expected_nodes_reached(2, 4, 2) == pytest.approx(2 * (1 - 1 / 6))  # 1 − C(2,2)/C(4,2)
    assert cm.layer_flops_per_token(cm.SHAPES["dsv3"]) == 6 * 7168 * 2048 * 9
    dsv3 = cm.SHAPES["dsv3"]
    # one node: everything over NVLink, 2·k·H·b·7/8 per token
    assert cm.layer_comm_bytes(dsv3, 8, 8, 2, dedup=False) == (2 * 8 * 7168 * 2 * 7 / 8, 0.0)
    # 64 GPUs on 8 nodes: per pair 56/64 of the bytes cross IB; DeepEP crosses once per remote node: 4 − 0.5
    nvlink, ib = cm.layer_comm_bytes(dsv3, 64, 8, 2, dedup=False)
    assert (nvlink, ib) == (2 * 8 * 7168 * 2 * 7 / 64, 2 * 8 * 7168 * 2 * 56 / 64)
    assert cm.layer_comm_bytes(dsv3, 64, 8, 2, dedup=True)[1] == pytest.approx(2 * 7168 * 2 * 3.5)


def test_projection_arithmetic():
    row = cm.project(cm.SHAPES["dsv3"], 64, tokens_per_gpu=1000, mfu=0.5)
    nvlink, ib = cm.layer_comm_bytes(cm.SHAPES["dsv3"], 64, 8, 2, dedup=False)
    assert row["comm_s"] == pytest.approx(2 * 1000 * 58 * max(nvlink / 200e9, ib / 50e9))
    assert row["compute_s"] == pytest.approx(3 * 1000 * 58 * 6 * 7168 * 2048 * 9 / (989e12 * 0.5))
    assert row["step_s"] == pytest.approx(row["comm_s"] + row["compute_s"])
    assert len(cm.projection_table()) == 2 * 2 * 7


def test_weak_and_strong_tokens():
    args = parse_args(["--tokens-per-rank", "64", "--global-tokens", "256"])
    assert tokens_per_dp_rank(args, "weak", 4) == 64 and tokens_per_dp_rank(args, "strong", 4) == 64
    assert tokens_per_dp_rank(args, "strong", 2) == 128
    with pytest.raises(ValueError, match="--global-tokens 256 is not divisible by the data-parallel size 3"):
        tokens_per_dp_rank(args, "strong", 3)


def test_world4_sweep_counts_bytes_exactly(tmp_path):
    out = tmp_path / "moe.json"
    tokens, world = 24, 4
    run_to_end([sys.executable, str(ROOT / "benchmarks" / "moe_ep_scaling.py"), "--world-sizes", "4",
                "--ep", "1", "2", "4", "--hidden", "32", "--experts", "16", "--moe-ffn", "16", "--layers", "2",
                "--dtype", "bf16", "--scaling", "weak", "--tokens-per-rank", str(tokens), "--warmup", "0",
                "--repeats", "1", "--router-skew", "2.0", "--out", str(out)], timeout=300)
    data = json.loads(out.read_text())
    points = {(p["dispatcher"], p["ep"]): p for p in data["points"]}
    assert set(points) == {(d, ep) for d in ("alltoall", "allgather") for ep in (1, 2, 4)}
    assert data["skipped"][0]["dispatcher"] == "flex" and "deep_ep" in data["skipped"][0]["reason"]
    top_k = data["config"]["model"]["top_k"]
    for (dispatcher, ep), p in points.items():
        assert p["global_tokens"] == tokens * world and p["forward_tokens_per_s"] > 0
        for r in p["ranks"]:
            assert r["bytes"] == r["formula_bytes"], (dispatcher, ep, r["rank"])
            assert bool(r["bytes"]) == (ep > 1)  # EP 1 moves nothing
        sent = sum(r["bytes"].get("dispatch", {}).get("sent", 0) for r in p["ranks"])
        assert sent == sum(r["bytes"].get("dispatch", {}).get("received", 0) for r in p["ranks"])
        assert p["bytes_match_formula"] is True
        for layer in p["imbalance"]:
            per_expert = layer["tokens_per_expert"]
            assert sum(per_expert) == tokens * world * top_k
            # the skew (+2 on experts 0, 1: sigmoid scores are < 1) puts every token on both
            assert per_expert[0] == per_expert[1] == tokens * world
            assert layer["max_over_mean"] == pytest.approx(max(per_expert) / (sum(per_expert) / len(per_expert)))
    assert points[("alltoall", 2)]["predicted_comm_s"] > 0
    for name in ("throughput", "time_split", "imbalance", "projection"):
        png = tmp_path / f"moe_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
