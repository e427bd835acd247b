"""Every kernel benchmark runs end to end in CPU mode on tiny shapes and writes a complete JSON (so the scripts
cannot rot). torch.compile is left out here only because compiling costs ~15 s of CI per script."""
import json

import pytest
import torch

from tests.bench_scripts import load_bench


def _load(name):
    return load_bench(name)


@pytest.mark.parametrize("name,modes", [
    ("bench_grpo_loss", {"fwd", "bwd", "fwd+bwd"}),
    ("bench_cross_entropy", {"fwd", "bwd", "fwd+bwd"}),
    ("bench_rmsnorm", {"fwd", "bwd", "fwd+bwd"}),
    ("bench_group_advantages", {"fwd"}),
    ("bench_decode_attention", {"fwd"}),
])
def test_benchmark_runs_on_cpu(name, modes, tmp_path, capsys):
    out = tmp_path / f"{name}.json"
    _load(name).main(["--device", "cpu", "--tiny", "--providers", "eager,triton", "--out", str(out)])
    payload = json.loads(out.read_text())
    assert payload["env"]["torch"] and payload["env"]["command"] and payload["copy_bandwidth_GBps"] > 0
    rows = payload["results"]
    assert {(r["provider"], r["mode"]) for r in rows} == {(p, m) for p in ("eager", "triton") for m in modes}
    assert all(r["ms"] > 0 and 0 < r["pct_of_floor"] for r in rows)
    assert "provider" in capsys.readouterr().out  # the table was printed


def test_decode_attention_benchmark_providers_agree_and_report_kv_bandwidth(tmp_path):
    bench = _load("bench_decode_attention")
    for model in bench.MODELS:  # the providers compute the same attention from their own cache layouts
        inputs = bench.make_case(model, 2, 40, torch.float32, "cpu").make()
        outs = [fn(inputs).reshape(2, inputs["q"].shape[1], -1) for fn in bench.providers("cpu", {}).values()]
        assert len(outs) == 3 and all(torch.allclose(o, outs[0], atol=1e-5) for o in outs)
    out = tmp_path / "decode.json"
    bench.main(["--device", "cpu", "--tiny", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert {(r["model"], r["provider"]) for r in rows} == {
        (m, p) for m in ("qwen2-1.5b", "dsv3-mla-tp8") for p in ("eager", "sdpa", "triton")}
    for r in rows:  # 2 rows x 40 tokens of K (and V unless it is K's latent prefix), fp32
        kv_bytes = 2 * 40 * {"qwen2-1.5b": 2 * 256, "dsv3-mla-tp8": 576}[r["model"]] * 4
        assert r["us"] == pytest.approx(1e3 * r["ms"], abs=0.01)
        assert r["kv_GBps"] == pytest.approx(kv_bytes / r["ms"] / 1e6, rel=0.01, abs=0.1)


def test_launch_sweep_rows_use_the_forced_configuration(tmp_path, monkeypatch):
    from r1_megatron.kernels.softmax_stats_triton import VocabLaunch

    seen = []
    monkeypatch.setattr(VocabLaunch, "parse", staticmethod(lambda text, _parse=VocabLaunch.parse: (
        seen.append(text), _parse(text))[1]))
    out = tmp_path / "sweep.json"
    _load("bench_grpo_loss").main(["--device", "cpu", "--tiny", "--providers", "triton,triton[32x1]",
                                   "--launch-sweep", "32x1", "--out", str(out)])


    rows = json.loads(out.read_text())["results"]
    assert {r["provider"] for r in rows} == {"triton", "triton[32x1]"}
    assert seen.count("32x1") > 1  # validated once up front, then used by every launch of the sweep row
    with pytest.raises(ValueError, match="R1_MEGATRON_VOCAB_LAUNCH='100x3'"):
        VocabLaunch.parse("100x3")
