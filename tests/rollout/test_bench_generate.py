"""benchmarks/bench_generate.py runs end to end in CPU tiny mode (the batch sweep, the context-growth mode with
preset KV sizes, and a DeepSeek-V3 checkpoint) and writes a complete, self-consistent JSON (so the script cannot
rot); transformers runs in a subprocess without r1_megatron; its arithmetic matches hand-worked values and the
model config."""
import importlib.util
import json
import math

import pytest

from tests.bench_scripts import load_bench

# measured whole-call times and what follows from them alone; the decode figures are differences of two medians
# (t_N − t_1), whose sign a loaded CPU can flip at these tiny sizes, so they are checked for consistency instead
POSITIVE = [f"{side}_{k}" for side in ("ours", "hf") for k in ("t1_ms", "tN_ms", "prefill_tokens_per_s")] + [
    "prefill_speedup_vs_hf", "param_bytes", "kv_bytes_per_token", "mean_context", "floor_ms"]
DECODE = [f"{side}_{k}" for side in ("ours", "hf") for k in ("decode_ms_per_step", "decode_tokens_per_s")] + [
    "decode_speedup_vs_hf", "floor_fraction", "hf_floor_fraction"]
QUICK = ["--device", "cpu", "--tiny", "--repeats", "1", "--warmup", "0"]


def _load():
    return load_bench("bench_generate")


@pytest.fixture(scope="module")
def bench():
    return _load()


def _run(bench, tmp_path_factory, argv: list[str]) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("bench") / "generate.json"
    with pytest.MonkeyPatch.context() as mp:
        # the PyTorch RMSNorm: Triton's interpreter (TRITON_INTERPRET=1 in the suite) would add seconds for nothing
        mp.setenv("R1_MEGATRON_KERNELS", "torch")
        returned = bench.main([*argv, "--out", str(out)])
    return returned, json.loads(out.read_text())


@pytest.fixture(scope="module")
def report(bench, tmp_path_factory):
    return _run(bench, tmp_path_factory, ["--device", "cpu", "--tiny"])


@pytest.fixture(scope="module")
def kv_report(bench, tmp_path_factory):
    return _run(bench, tmp_path_factory, [*QUICK, "--kv-lengths", "8", "40", "--batch-sizes", "2", "--new-tokens",
                                          "3", "--preset", "tiny-dense", "tiny-moe"])[1]


@pytest.fixture(scope="module")
def dsv3_report(bench, tmp_path_factory):
    return _run(bench, tmp_path_factory, [*QUICK, "--arch", "deepseek-v3", "--batch-sizes", "2", "--new-tokens",
                                          "3"])[1]


def _check_row(row: dict) -> None:
    for key in POSITIVE:
        assert math.isfinite(row[key]) and row[key] > 0, (row["batch"], key, row[key])
    for side in ("ours", "hf"):  # the decode figures follow from the two measured times (split_times)
        step = (row[f"{side}_tN_ms"] - row[f"{side}_t1_ms"]) / (row["new_tokens"] - 1)
        assert row[f"{side}_decode_ms_per_step"] == pytest.approx(step)
        assert row[f"{side}_decode_tokens_per_s"] == pytest.approx(row["batch"] / step * 1e3)
    assert all(math.isfinite(row[key]) for key in DECODE)
    assert row["token_agreement"] == 1.0 and row["prefix_agreement"] == 1.0  # fp32: exactly the same tokens


def _mla_kv_bytes(layers: int, kv_lora_rank: int, qk_rope_head_dim: int) -> int:
    """Our MLA cache stores the latent: the compressed kv and the shared rope key, fp32, per layer."""
    return layers * (kv_lora_rank + qk_rope_head_dim) * 4


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
    assert payload["mode"] == "batch-sweep" and payload["kv_growth"] is None and payload["kv_bytes_by_preset"] == []
    rows = payload["results"]
    assert [(r["batch"], r["prompt_len"], r["new_tokens"]) for r in rows] == [(1, 8, 4), (4, 8, 4)]
    for row in rows:
        _check_row(row)
    assert payload["goal"]["met"] is None  # the goal is for GPU runs only


def test_transformers_ran_in_a_process_without_r1_megatron(report):
    hf = report[1]["hf_process"]
    assert hf["r1_megatron_imported"] is False and hf["transformers"] and hf["threads"] >= 1


def test_the_import_check_sees_r1_megatron(bench, tmp_path):
    """hf_worker's flag is not constant: run in this process, which has imported r1_megatron, it says so."""
    importlib.import_module("r1_megatron.rollout")
    bench.write_random_checkpoint("qwen2", bench.TINY_QWEN2, bench.torch.float32, tmp_path / "hf", 0, "cpu")
    (tmp_path / "jobs.json").write_text(json.dumps([{"batch": 1, "prompt_len": 2, "prompts": [[3, 4]]}]))
    got = bench.hf_worker({"hf_dir": str(tmp_path / "hf"), "jobs": str(tmp_path / "jobs.json"), "dtype": "fp32",
                           "device": "cpu", "threads": 1, "new_tokens": 2, "repeats": 1, "warmup": 0})
    assert got["r1_megatron_imported"] is True and len(got["rows"][0]["tokens"][0]) == 2


def test_kv_lengths_mode_rows_and_growth(kv_report):
    assert kv_report["mode"] == "kv-lengths" and kv_report["goal"]["met"] is None
    rows = kv_report["results"]
    assert [(r["batch"], r["prompt_len"], r["new_tokens"]) for r in rows] == [(2, 8, 3), (2, 40, 3)]
    for row in rows:
        _check_row(row)
    # the checkpoint was made long enough for the longest prompt + new tokens
    assert kv_report["model"]["config"]["max_position_embeddings"] == max(128, 40 + 3)
    growth = kv_report["kv_growth"]
    assert [(g["batch"], g["context_len"]) for g in growth] == [(2, 8), (2, 40)]
    for g, row in zip(growth, rows):
        for side in ("ours", "hf"):
            assert g[f"{side}_decode_ms_per_step"] == row[f"{side}_decode_ms_per_step"]
            assert g[f"{side}_x_shortest"] == pytest.approx(row[f"{side}_decode_ms_per_step"] /
                                                            rows[0][f"{side}_decode_ms_per_step"])


def test_preset_kv_bytes_follow_the_preset_configs(kv_report):
    from r1_megatron.models import preset

    by_name = {p["preset"]: p for p in kv_report["kv_bytes_by_preset"]}
    assert sorted(by_name) == ["tiny-dense", "tiny-moe"]
    dense = preset("tiny-dense")  # GQA: k and v, num_kv_heads × head_dim fp32 values each, per layer
    assert by_name["tiny-dense"]["kv_bytes_per_token"] == 2 * dense.num_layers * dense.num_kv_heads * dense.head_dim * 4
    moe, mla = preset("tiny-moe"), preset("tiny-moe").mla
    assert by_name["tiny-moe"]["architecture"] == "deepseek_v3"
    assert by_name["tiny-moe"]["kv_bytes_per_token"] == _mla_kv_bytes(moe.num_layers, mla.kv_lora_rank,
                                                                      mla.qk_rope_head_dim)


def test_deepseek_v3_checkpoint_side_by_side(dsv3_report, bench):
    c = dsv3_report["model"]["config"]
    assert dsv3_report["model"]["architecture"] == "deepseek-v3" and c == bench.TINY_DSV3
    for row in dsv3_report["results"]:
        _check_row(row)
        assert row["kv_bytes_per_token"] == _mla_kv_bytes(c["num_hidden_layers"], c["kv_lora_rank"],
                                                          c["qk_rope_head_dim"])


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


def test_context_growth_hand_values(bench):
    rows = [{"batch": b, "prompt_len": p, "ours_decode_ms_per_step": o, "hf_decode_ms_per_step": h,
             "decode_speedup_vs_hf": h / o} for b, p, o, h in ((4, 512, 3.0, 8.0), (4, 64, 2.0, 4.0), (1, 64, 1.0, 1.0))]
    got = bench.context_growth(rows)
    assert [(g["batch"], g["context_len"]) for g in got] == [(1, 64), (4, 64), (4, 512)]
    assert [g["ours_x_shortest"] for g in got] == [1.0, 1.0, 1.5]  # 3 ms at 512 / 2 ms at 64, batch 4
    assert [g["hf_x_shortest"] for g in got] == [1.0, 1.0, 2.0]
    assert got[2]["decode_speedup_vs_hf"] == pytest.approx(8 / 3)


def test_kv_bytes_per_token_is_cache_bytes_over_capacity(bench):
    class Cache:
        capacity_tokens = 30  # e.g. 3 blocks of 10 positions

        def nbytes(self):
            return 6000

    class FakeEngine:
        cache = Cache()

    assert bench.kv_bytes_per_token(FakeEngine()) == 200.0  # 6000 B over 30 positions


def test_goal_verdict(bench):
    fast = {"batch": 32, "decode_speedup_vs_hf": 2.5, "floor_fraction": 0.3}
    assert bench.goal_verdict([fast, {"batch": 1, "decode_speedup_vs_hf": 0.1, "floor_fraction": 0.01}],
                              "cuda")["met"] is True  # batch < 32 rows do not count; the floor counts at 64
    assert bench.goal_verdict([fast, dict(fast, batch=64, floor_fraction=0.59)], "cuda")["met"] is False
    assert bench.goal_verdict([fast, dict(fast, batch=64, floor_fraction=0.6)], "cuda")["met"] is True
    assert bench.goal_verdict([dict(fast, batch=8)], "cuda")["met"] is None
    assert bench.goal_verdict([fast], "cpu")["met"] is True  # 2.5 >= 1.5; no floor goal on CPU
    assert bench.goal_verdict([dict(fast, decode_speedup_vs_hf=1.4)], "cpu")["met"] is False


def test_every_preset_has_its_computed_kv_bytes(bench):
    rows = {(r["preset"], r["tp"], r["mla_latent"]): r["bf16_bytes_per_token_per_gpu"]
            for r in bench.kv_bytes_all_presets()}
    assert rows[("deepseek-v3-671b", 8, True)] == 61 * (512 + 64) * 2 == 70_272  # the latent, replicated over TP
    assert rows[("deepseek-v3-671b", 8, False)] == 61 * 128 // 8 * (128 + 64 + 128) * 2 == 624_640
    assert rows[("qwen2.5-math-1.5b", 1, None)] == 28 * 2 * 2 * 128 * 2  # 2 KV heads of 128, k and v
    assert ("qwen2.5-math-1.5b", 8, None) not in rows  # 2 KV heads do not divide over TP 8
