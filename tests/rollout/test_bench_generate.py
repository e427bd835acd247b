"""benchmarks/bench_generate.py runs end to end in CPU tiny mode and writes a complete, self-consistent JSON (so
the script cannot rot), and its arithmetic matches hand-worked values and the model config."""
import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_generate.py"
SIDES = ("t1_ms", "tN_ms", "prefill_tokens_per_s", "decode_ms_per_step", "decode_tokens_per_s")
POSITIVE = [f"{side}_{k}" for side in ("ours", "hf") for k in SIDES] + [
    "decode_speedup_vs_hf", "prefill_speedup_vs_hf", "param_bytes", "kv_bytes_per_token", "mean_context",
    "floor_ms", "floor_fraction", "hf_floor_fraction"]


def _load():
    spec = importlib.util.spec_from_file_location("bench_generate", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load()


@pytest.fixture(scope="module")
def report(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "generate.json"
    with pytest.MonkeyPatch.context() as mp:
        # the PyTorch RMSNorm: Triton's interpreter (TRITON_INTERPRET=1 in the suite) would add seconds for nothing
        mp.setenv("R1_MEGATRON_KERNELS", "torch")
        returned = bench.main(["--device", "cpu", "--tiny", "--out", str(out)])
    return returned, json.loads(out.read_text())


def _tiny_parameter_bytes(c: dict) -> int:
    """fp32 bytes of the tiny Qwen2 without its (untied) input embedding table, counted from the HF config."""
    h, heads, groups = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    d = h // heads
    attention = h * heads * d + heads * d + 2 * (h * groups * d + groups * d) + heads * d * h  # q, k, v (bias), o
    layer = attention + 3 * h * c["intermediate_size"] + 2 * h  # gate/up/down, two norms
    return 4 * (c["num_hidden_layers"] * layer + h + c["vocab_size"] * h)  # + final norm + output layer


def test_cpu_tiny_run_writes_every_field(report, bench):
    returned, payload = report
    assert returned == payload
    assert payload["benchmark"] == "generate" and payload["device_type"] == "cpu"
    assert "--tiny" in payload["env"]["command"] and payload["copy_bandwidth_GBps"] > 0
    assert payload["env"]["kernel_backend"] == "torch"
    assert payload["model"]["config"] == bench.TINY_QWEN2 and payload["model"]["dtype"] == "fp32"
    rows = payload["results"]
    assert [(r["batch"], r["prompt_len"], r["new_tokens"]) for r in rows] == [(1, 8, 4), (4, 8, 4)]
    for row in rows:
        for key in POSITIVE:
            assert math.isfinite(row[key]) and row[key] > 0, (row["batch"], key, row[key])
        assert row["token_agreement"] == 1.0 and row["prefix_agreement"] == 1.0
    assert payload["goal"]["met"] is None  # the goal is for GPU runs only


def test_bytes_and_floor_follow_the_config(report):
    _, payload = report
    c = payload["model"]["config"]
    kv_channels = c["hidden_size"] // c["num_attention_heads"]
    for row in payload["results"]:
        # GQA cache: k and v, num_key_value_heads × kv_channels fp32 values each, per layer
        assert row["kv_bytes_per_token"] == 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * kv_channels * 4
        assert row["param_bytes"] == _tiny_parameter_bytes(c) == payload["model"]["param_bytes"]
        assert row["mean_context"] == row["prompt_len"] + row["new_tokens"] / 2
        read = row["param_bytes"] + row["batch"] * row["mean_context"] * row["kv_bytes_per_token"]
        assert row["floor_ms"] == pytest.approx(read / (payload["copy_bandwidth_GBps"] * 1e9) * 1e3)
        assert row["floor_fraction"] == pytest.approx(row["floor_ms"] / row["ours_decode_ms_per_step"])
        assert row["decode_speedup_vs_hf"] == pytest.approx(row["hf_decode_ms_per_step"] /
                                                            row["ours_decode_ms_per_step"])


def test_table_is_printed(report, bench, capsys):
    bench.print_table(report[1])  # the module-scoped run printed before this test's capsys existed
    out = capsys.readouterr().out
    assert "ours ms/step" in out and "goal:" in out


def test_split_times_hand_values(bench):
    got = bench.split_times(t1_ms=10.0, tN_ms=40.0, batch=4, prompt_len=8, new_tokens=4)
    assert got["decode_ms_per_step"] == pytest.approx(10.0)  # (40 − 10) / 3
    assert got["prefill_tokens_per_s"] == pytest.approx(3200.0)  # 4·8 tokens in 10 ms
    assert got["decode_tokens_per_s"] == pytest.approx(400.0)  # 4 tokens per 10 ms step


def test_floor_and_agreement_hand_values(bench):
    # (1e6 + 2·10·1000) bytes at 1 GB/s = 1.02 ms
    assert bench.decode_floor_ms(10**6, 1000, 2, 10, 1e9) == pytest.approx(1.02)
    equal, prefix = bench.agreement([[1, 2, 3], [4, 5, 6]], [[1, 2, 9], [4, 0, 6]])
    assert equal == pytest.approx(4 / 6) and prefix == pytest.approx((2 / 3 + 1 / 3) / 2)
    with pytest.raises(ValueError, match="different lengths"):
        bench.agreement([[1, 2]], [[1]])


def test_goal_verdict(bench):
    fast = {"batch": 32, "decode_speedup_vs_hf": 2.5, "floor_fraction": 0.6}
    assert bench.goal_verdict([fast, {"batch": 1, "decode_speedup_vs_hf": 0.1, "floor_fraction": 0.01}],
                              "cuda")["met"] is True  # batch < 32 rows do not count
    assert bench.goal_verdict([fast, dict(fast, batch=64, floor_fraction=0.4)], "cuda")["met"] is False
    assert bench.goal_verdict([dict(fast, batch=8)], "cuda")["met"] is None
    assert bench.goal_verdict([fast], "cpu")["met"] is None
