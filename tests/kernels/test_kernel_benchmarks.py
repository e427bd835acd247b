"""Every kernel benchmark runs end to end in CPU mode on tiny shapes and writes a complete JSON (so the scripts
cannot rot). torch.compile is left out here only because compiling costs ~15 s of CI per script."""
import importlib.util
import json
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,modes", [
    ("bench_grpo_loss", {"fwd", "bwd", "fwd+bwd"}),
    ("bench_cross_entropy", {"fwd", "bwd", "fwd+bwd"}),
    ("bench_rmsnorm", {"fwd", "bwd", "fwd+bwd"}),
    ("bench_group_advantages", {"fwd"}),
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
