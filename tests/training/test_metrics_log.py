"""MetricsLogger: JSONL content and precision, resume truncation, TensorBoard events, disabled ranks; Progress lines."""
import io
import json
import math
import sys

import numpy as np
import pytest
import torch

from r1_megatron.training.metrics_log import MetricsLogger, read_metrics
from r1_megatron.training.progress import Progress


def _lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _log_steps(run_dir, steps, scale, **kwargs):
    with MetricsLogger(run_dir, tensorboard=kwargs.pop("tensorboard", False), **kwargs) as logger:
        for step in steps:
            logger.log(step, {"reward/total_mean": scale * step, "loss/kl": 0.5 * step})


def test_lines_hold_step_and_metrics_at_full_precision(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"reward/total_mean": 0.1 + 0.2, "accuracy": 1 / 3, "response_length/max": 512})
        logger.log(2, {"loss/kl": torch.tensor(2.0**-40, dtype=torch.float64), "grad_norm": np.float32(1.5)})
        assert len(_lines(tmp_path)) == 2  # flushed while still open
    assert _lines(tmp_path) == [
        {"step": 1, "reward/total_mean": 0.30000000000000004, "accuracy": 0.3333333333333333,
         "response_length/max": 512},
        {"step": 2, "loss/kl": 9.094947017729282e-13, "grad_norm": 1.5},
    ]
    assert isinstance(_lines(tmp_path)[0]["response_length/max"], int)


def test_nonfinite_values_are_strings_in_the_file_and_floats_when_read(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.0})
    assert _lines(tmp_path) == [{"step": 1, "a": "NaN", "b": "Infinity", "c": "-Infinity", "d": 1.0}]
    (record,) = read_metrics(tmp_path)
    assert math.isnan(record["a"]) and record["b"] == math.inf and record["c"] == -math.inf and record["d"] == 1.0


def test_resume_keeps_steps_up_to_checkpoint_and_replaces_the_rest(tmp_path):
    _log_steps(tmp_path, range(1, 6), scale=1.0)
    _log_steps(tmp_path, [4, 5], scale=10.0, resume_step=3)
    assert [(r["step"], r["reward/total_mean"]) for r in _lines(tmp_path)] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temp file left behind


def test_resume_drops_a_line_cut_short_by_a_kill(tmp_path):
    _log_steps(tmp_path, range(1, 4), scale=1.0)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "reward/to')
    _log_steps(tmp_path, [4], scale=10.0, resume_step=3)
    assert [r["step"] for r in _lines(tmp_path)] == [1, 2, 3, 4]
    assert _lines(tmp_path)[-1]["reward/total_mean"] == 40.0


def test_resume_without_a_metrics_file_starts_one(tmp_path):
    _log_steps(tmp_path / "run", [8], scale=1.0, resume_step=7)
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [8]


def test_unreadable_line_names_file_and_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a JSON line"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"reward": 2}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: expected an object with an integer 'step'"):
        MetricsLogger(tmp_path, tensorboard=False, resume_step=1)


def test_missing_metrics_file_error_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no metrics file at {tmp_path / 'metrics.jsonl'}"):
        read_metrics(tmp_path)


def test_new_run_refuses_a_directory_that_holds_metrics(tmp_path):
    _log_steps(tmp_path, [1], scale=1.0)
    with pytest.raises(FileExistsError, match="pass resume_step"):
        MetricsLogger(tmp_path, tensorboard=False)
    assert len(_lines(tmp_path)) == 1


def test_bad_calls_are_rejected(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(2, {"a": 1.0})
    with pytest.raises(ValueError, match="step 2 logged after step 2"):
        logger.log(2, {"b": 1.0})
    with pytest.raises(TypeError, match="metric 'name' must be a number, got str"):
        logger.log(3, {"name": "x"})
    with pytest.raises(ValueError, match="key 'step'"):
        logger.log(3, {"step": 1.0})
    with pytest.raises(ValueError, match="resume_step must be >= 0, got -1"):
        MetricsLogger(tmp_path / "other", tensorboard=False, resume_step=-1)
    logger.close()
    logger.close()
    with pytest.raises(RuntimeError, match="closed"):
        logger.log(3, {"a": 1.0})
    assert _lines(tmp_path) == [{"step": 2, "a": 1.0}]


def test_disabled_logger_creates_nothing(tmp_path):
    run_dir = tmp_path / "run"
    with MetricsLogger(run_dir, tensorboard=True, enabled=False) as logger:
        logger.log(1, {"a": 1.0})
        logger.log(1, {"a": 1.0})  # no checks either: non-logging ranks may call it freely
    assert not run_dir.exists()


def test_tensorboard_scalars_are_readable_and_resume_purges_later_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log_steps(tmp_path, range(1, 6), scale=1.0, tensorboard=True)
    _log_steps(tmp_path, [4, 5], scale=10.0, tensorboard=True, resume_step=3)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"reward/total_mean", "loss/kl"}
    assert [(e.step, e.value) for e in events.Scalars("reward/total_mean")] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]


def test_missing_tensorboard_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install tensorboard, or pass tensorboard=False"):
        MetricsLogger(tmp_path, tensorboard=True)


class _Clock:
    """Fake monotonic clock: 2 s per step."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


METRICS = {"reward/total_mean": 0.25, "accuracy": 0.5, "response_length/mean": 123.0, "loss/kl": 0.00123,
           "grad_norm": 9.0}


def _run(progress, clock, steps, metrics=METRICS):
    for step in steps:
        clock.now += 2.0
        progress.update(step, metrics)


def test_progress_prints_plain_lines_when_not_a_terminal(capsys):
    clock = _Clock()
    progress = Progress(10, clock=clock)
    _run(progress, clock, range(1, 5))
    _run(progress, clock, [5], {"accuracy": 0.75})
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 5
    assert lines[3] == "step 4/10 (40%) | 2.00 s/step | ETA 0:00:12 | reward=0.25 acc=0.5 len=123 kl=0.00123"
    assert lines[4] == "step 5/10 (50%) | 2.00 s/step | ETA 0:00:10 | acc=0.75"


def test_progress_prints_at_most_about_fifty_lines(capsys):
    clock = _Clock()
    with Progress(1000, initial_step=200, keys=("acc",), clock=clock) as progress:  # 800 steps -> every 16
        _run(progress, clock, range(201, 1001))
    lines = capsys.readouterr().err.splitlines()
    steps = [int(line.split()[1].split("/")[0]) for line in lines]
    assert steps == [201, *range(216, 1001, 16)] and len(lines) == 51
    assert lines[-1] == "step 1000/1000 (100%) | 2.00 s/step | ETA 0:00:00 | acc=0.5"


def test_progress_close_prints_the_last_update_between_lines(capsys):
    clock = _Clock()
    progress = Progress(100, clock=clock)  # a line every 2 steps
    _run(progress, clock, range(1, 6))
    assert [line.split()[1] for line in capsys.readouterr().err.splitlines()] == ["1/100", "2/100", "4/100"]
    progress.close()
    assert capsys.readouterr().err.startswith("step 5/100 (5%) | 2.00 s/step | ETA 0:03:10 |")


def test_progress_draws_a_tqdm_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    with Progress(3, stream=stream) as progress:
        for step in (1, 2, 3):
            progress.update(step, METRICS)
    assert "3/3" in stream.getvalue() and "reward=0.25 acc=0.5 len=123 kl=0.00123" in stream.getvalue()


def test_progress_disabled_prints_nothing_and_bad_arguments_are_rejected(capsys):
    with Progress(10, enabled=False) as progress:
        progress.update(1, METRICS)
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match=r"progress keys \['loss'\] have no entry"):
        Progress(10, keys=("acc", "loss"))
    with pytest.raises(ValueError, match="initial_step must be in"):
        Progress(10, initial_step=11)
    progress = Progress(10, keys=("gn",), metric_names={"gn": "grad_norm"}, clock=lambda: 4.0)
    progress.update(1, METRICS)
    assert capsys.readouterr().err.endswith("| gn=9\n")


def _samples(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def test_samples_are_logged_per_step_shown_in_tensorboard_and_resumed_like_the_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def sample(step):
        return {"prompt": f"Q{step} <think>", "completion": "```x```", "reward": float(step)}

    with MetricsLogger(tmp_path, tensorboard=True) as logger:
        for step in (1, 2, 3):
            logger.log(step, {"a": 1.0})
            logger.log_samples(step, [sample(step), sample(step)])
    with MetricsLogger(tmp_path, tensorboard=True, resume_step=1) as logger:  # steps 2 and 3 are recomputed
        logger.log(2, {"a": 2.0})
        logger.log_samples(2, [sample(20)])
    assert [(s["step"], s["reward"]) for s in _samples(tmp_path)] == [(1, 1.0), (1, 1.0), (2, 20.0)]
    assert _samples(tmp_path)[0]["prompt"] == "Q1 <think>"
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("samples/text_summary")}
    assert "Q1 <think>" in texts[1] and "Q20 <think>" in texts[2] and "reward: 20.0" in texts[2]
    assert "```\nQ1 <think>\n```" in texts[1] and "` ` `x` ` `" in texts[1]  # texts fenced, fences escaped


def test_a_new_run_starts_an_empty_samples_file(tmp_path):
    (tmp_path / "samples.jsonl").write_text('{"step": 1, "prompt": "old"}\n')  # e.g. a run killed in step 1
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"a": 1.0})
        logger.log_samples(1, [{"prompt": "new"}])
    assert [s["prompt"] for s in _samples(tmp_path)] == ["new"]
