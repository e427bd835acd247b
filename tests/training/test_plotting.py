"""plot_run writes real PNGs of the logged charts, skips charts whose metric is missing, and fails clearly."""
import logging
import math
import struct

import pytest

from r1_megatron.plotting import charts_for, moving_average, plot_run, series
from r1_megatron.training.metrics_log import MetricsLogger, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    """(width, height) from the IHDR chunk, which a valid PNG has right after its signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _write_run(run_dir, steps, metrics_at):
    with MetricsLogger(run_dir, tensorboard=False) as logger:
        for step in range(1, steps + 1):
            logger.log(step, metrics_at(step))


def _full_metrics(step):
    return {"reward/total_mean": step / 30, "reward/accuracy_mean": step / 40, "reward/format_mean": 0.5,
            "accuracy": step / 40, "format_rate": 0.9, "response_length/mean": 100.0 + step,
            "response_length/max": 200 + 2 * step, "loss/kl": math.nan if step == 7 else 1e-3 * step,
            "grad_norm": 1.0}


def test_plot_run_writes_every_chart_and_the_summary(tmp_path):
    _write_run(tmp_path, 30, _full_metrics)
    paths = plot_run(tmp_path)
    assert [p.name for p in paths] == ["reward.png", "accuracy.png", "response_length.png", "kl.png", "summary.png"]
    for path in paths:
        assert path.parent == tmp_path / "plots" and path.stat().st_size > 10_000
        assert _png_size(path) == ((1200, 800) if path.name == "summary.png" else (700, 450))


def test_reward_chart_has_a_line_per_component_and_nan_points_are_dropped(tmp_path):
    _write_run(tmp_path, 10, _full_metrics)
    records = read_metrics(tmp_path)
    reward = charts_for(records)[0]
    assert (reward.main, reward.extra) == ("reward/total_mean", ("reward/accuracy_mean", "reward/format_mean"))
    steps, values = series(records, "loss/kl")
    assert 7 not in steps and len(steps) == 9 and values[-1] == pytest.approx(0.01)


def test_moving_average_is_a_trailing_mean():
    assert moving_average([1.0, 2.0, 3.0, 4.0, 10.0], 2) == [1.0, 1.5, 2.5, 3.5, 7.0]
    assert moving_average([3.0, 6.0, 9.0], 5) == [3.0, 4.5, 6.0]


def test_missing_metrics_skip_their_charts_with_a_warning(tmp_path, caplog):
    _write_run(tmp_path, 5, lambda step: {"reward/total_mean": 0.1 * step, "accuracy": 0.2})
    out_dir = tmp_path / "elsewhere"
    with caplog.at_level(logging.WARNING, logger="r1_megatron.plotting"):
        paths = plot_run(tmp_path, out_dir)
    assert [p.name for p in paths] == ["reward.png", "accuracy.png", "summary.png"]
    assert all(p.parent == out_dir and _png_size(p) for p in paths)
    assert "response_length/mean not in" in caplog.text and "loss/kl not in" in caplog.text


def test_missing_empty_or_unchartable_metrics_file_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no metrics file at {tmp_path / 'metrics.jsonl'}$"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match=f"metrics file {tmp_path / 'metrics.jsonl'} holds no steps$"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "grad_norm": 2.0}\n')
    with pytest.raises(ValueError, match="has none of the charted metrics"):
        plot_run(tmp_path)
    assert not (tmp_path / "plots").exists()


def test_an_moe_run_gets_router_health_charts(tmp_path):
    _write_run(tmp_path, 6, lambda step: {**_full_metrics(step), "router/agreement": 1.0 - 0.01 * step,
                                          "router/agreement_min": 0.9, "router/imbalance_max": 1.5,
                                          "router/imbalance_mean": 1.2, "router/bias_drift_max": 0.0})
    records = read_metrics(tmp_path)
    names = [c.name for c in charts_for(records)]
    assert names[-3:] == ["router_agreement", "router_load", "router_bias"]
    written = {p.name for p in plot_run(tmp_path)}
    assert {"router_agreement.png", "router_load.png", "router_bias.png"} <= written
    # a run that logs only the bias drift (router.replay: off) gets only that chart; a dense run none
    assert [c.name for c in charts_for([{"reward/total_mean": 0.0, "router/bias_drift_max": 0.0}])][-1] == \
        "router_bias"
    assert not any(c.name.startswith("router") for c in charts_for([{"reward/total_mean": 0.0}]))
