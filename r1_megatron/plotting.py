"""PNG charts of a run's metrics.jsonl against step, plus a summary of them all: reward, accuracy, response length
and KL for RL runs; loss (and validation loss), LR, gradient norm and packing efficiency for SFT runs; and the
held-out evaluation's scores for runs that evaluate (training_eval.py).

matplotlib is imported only when plotting, through its object API (Figure + savefig renders with Agg), so
plotting never switches the pyplot backend of the calling process and needs no display.
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from r1_megatron.training.metrics_log import metrics_path, read_metrics

log = logging.getLogger(__name__)
PLOTS_DIR = "plots"
SMOOTH_MIN_STEPS = 20  # below this a moving average hides more than it shows
_REWARD_COMPONENT = re.compile(r"^reward/(?P<name>.+)_mean$")
_EVAL_SCORE = re.compile(r"^eval/(pass|cons)@\d+$")


@dataclass(frozen=True)
class Chart:
    """One figure: `main` must be present for the chart to be drawn; `extra` lines are drawn when present."""
    name: str
    title: str
    ylabel: str
    main: str
    extra: tuple[str, ...] = ()


def _reward_components(records: list[dict]) -> tuple[str, ...]:
    keys = {k for r in records for k in r if _REWARD_COMPONENT.match(k) and k != "reward/total_mean"}
    return tuple(sorted(keys))


SFT_CHARTS = (
    Chart("loss", "Loss (cross-entropy per trained token)", "nats", "loss", ("val/loss",)),
    Chart("lr", "Learning rate", "lr", "lr"),
    Chart("grad_norm", "Gradient norm", "norm", "grad_norm"),
    Chart("packing", "Packing efficiency (real / computed tokens)", "fraction", "packing/efficiency"),
)


def _eval_scores(records: list[dict]) -> tuple[str, ...]:
    """The periodic evaluation's pass@K and cons@K keys that were logged (evaluation/training_eval.py)."""
    keys = {k for r in records for k in r if _EVAL_SCORE.match(k)}
    return tuple(sorted(keys, key=lambda k: (k.startswith("eval/cons@"), int(k.rsplit("@", 1)[1]))))


def charts_for(records: list[dict]) -> tuple[Chart, ...]:
    """The charts of the run's kind: RL runs (a reward is logged) get reward, accuracy, length and KL, the
    reward chart carrying one extra line per logged reward component and the accuracy chart the held-out
    evaluation's pass@1 and cons@K; SFT runs get loss, LR, gradient norm and packing efficiency. A run that
    evaluated (eval/pass@1 logged) also gets a chart of every evaluation score."""
    scores = _eval_scores(records)
    evaluation = (Chart("eval", "Held-out evaluation (R1 protocol)", "fraction", "eval/pass@1",
                        tuple(k for k in scores if k != "eval/pass@1")),) if scores else ()
    if not any("reward/total_mean" in r for r in records) and any("loss" in r for r in records):
        return SFT_CHARTS + evaluation
    shown = tuple(k for k in scores if k == "eval/pass@1" or k.startswith("eval/cons@"))
    return (
        Chart("reward", "Reward", "reward", "reward/total_mean", _reward_components(records)),
        Chart("accuracy", "Accuracy (rollouts; held-out evaluation)", "fraction", "accuracy", ("format_rate",) + shown),
        Chart("response_length", "Response length", "tokens", "response_length/mean", ("response_length/max",)),
        Chart("kl", "KL to reference", "KL", "loss/kl"),
    ) + evaluation + _router_charts(records)


def _router_charts(records: list[dict]) -> tuple[Chart, ...]:
    """An MoE policy's router health (grpo/router_rl.py): agreement with the rollout's routing, expert load
    imbalance and expert-bias drift, each drawn when it was logged (a dense policy logs none of them)."""
    charts = (
        Chart("router_agreement", "MoE routing: training forward vs rollout (token-expert choices equal)",
              "fraction", "router/agreement", ("router/agreement_min",)),
        Chart("router_load", "MoE expert load: max / mean tokens per expert", "ratio", "router/imbalance_max",
              ("router/imbalance_mean",)),
        Chart("router_bias", "MoE expert-bias drift per step (|Δ bias|)", "|Δ bias|", "router/bias_drift_max",
              ("router/bias_drift_mean",)),
    )
    return tuple(c for c in charts if any(c.main in r for r in records))


def series(records: list[dict], metric: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the finite values of `metric`."""
    pairs = [(r["step"], float(r[metric])) for r in records
             if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    return [s for s, _ in pairs], [v for _, v in pairs]


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start): out[i] = mean(values[max(0,i-w+1):i+1])."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _draw_line(ax, steps: list[int], values: list[float], label: str) -> None:
    if len(steps) < SMOOTH_MIN_STEPS:
        ax.plot(steps, values, marker="o", markersize=3, label=label)
        return
    raw, = ax.plot(steps, values, alpha=0.3, linewidth=1)
    window = max(2, len(values) // 20)
    ax.plot(steps, moving_average(values, window), color=raw.get_color(), linewidth=2,
            label=f"{label} (moving avg {window})")


def _draw_chart(ax, chart: Chart, records: list[dict]) -> None:
    for metric in (chart.main, *chart.extra):
        steps, values = series(records, metric)
        if steps:
            _draw_line(ax, steps, values, metric)
    ax.set_title(chart.title)
    ax.set_xlabel("step")
    ax.set_ylabel(chart.ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def _draw_missing(ax, chart: Chart) -> None:
    ax.set_title(chart.title)
    ax.text(0.5, 0.5, f"{chart.main} not logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"plotting needs matplotlib ({e}): pip install matplotlib") from e
    return Figure(**kwargs)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    return path


def _load(run_dir: Path) -> list[dict]:
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"metrics file {metrics_path(run_dir)} holds no steps")
    return sorted(records, key=lambda r: r["step"])


def _charts_present(records: list[dict], run_dir: Path) -> tuple[tuple[Chart, ...], list[Chart]]:
    """All charts and those whose main metric was logged; warns about the others, raises if none was."""
    charts = charts_for(records)
    present = [c for c in charts if series(records, c.main)[0]]
    if not present:
        raise ValueError(f"{metrics_path(run_dir)} has none of the charted metrics "
                         f"({', '.join(c.main for c in charts)})")
    for chart in charts:
        if chart not in present:
            log.warning("plot %s skipped: %s not in %s", chart.name, chart.main, metrics_path(run_dir))
    return charts, present


def _write_summary(path: Path, charts: tuple[Chart, ...], present: list[Chart], records: list[dict]) -> Path:
    """Two rows of charts (2x2 for four, 2x3 for five or six); a grid cell without a chart stays empty."""
    columns = max(2, math.ceil(len(charts) / 2))
    fig = _figure(figsize=(6 * columns, 8))
    axes = list(fig.subplots(2, columns).flat)
    for ax, chart in zip(axes, charts):
        if chart in present:
            _draw_chart(ax, chart, records)
        else:
            _draw_missing(ax, chart)
    for ax in axes[len(charts):]:
        ax.set_axis_off()
    return _save(fig, path)


def plot_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write <chart>.png for each chart whose main metric was logged, and summary.png (all charts), into out_dir
    (default RUN_DIR/plots); return the paths written. Charts whose metric is absent are skipped with a
    warning; a missing or empty metrics file, or one with none of the charted metrics, raises."""
    run_dir = Path(run_dir)
    records = _load(run_dir)
    charts, present = _charts_present(records, run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / PLOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for chart in present:
        fig = _figure(figsize=(7, 4.5))
        _draw_chart(fig.add_subplot(), chart, records)
        written.append(_save(fig, out / f"{chart.name}.png"))
    written.append(_write_summary(out / "summary.png", charts, present, records))
    return written
