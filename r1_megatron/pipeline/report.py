"""The pipeline's final table: one row per stage (pipeline.json keeps the rows, pipeline.md the table)."""
from __future__ import annotations

from typing import Mapping, Sequence


def held_out_scores(results: Mapping[str, Mapping]) -> dict[str, dict[str, float]]:
    """benchmark -> its pass@1 and cons@K (the numbers of an evaluation's results.json `results`)."""
    return {name: {k: v for k, v in r.items() if k == "pass@1" or k.startswith("cons@")}
            for name, r in results.items()}


def _scores(row: Mapping, metric: str) -> str:
    """`0.412` for one benchmark, `a 0.412; b 0.300` for several; '-' when the stage was not evaluated."""
    evaluation = row.get("eval") or {}
    cells = []
    for name, scores in evaluation.items():
        value = next((v for k, v in scores.items() if k == metric or (metric == "cons" and k.startswith("cons@"))),
                     None)
        if value is not None:
            cells.append(f"{value:.3f}" if len(evaluation) == 1 else f"{name} {value:.3f}")
    return "; ".join(cells) or "-"


def _cons_header(rows: Sequence[Mapping]) -> str:
    keys = sorted({k for row in rows for scores in (row.get("eval") or {}).values() for k in scores
                   if k.startswith("cons@")})
    return "/".join(keys) or "cons@k"


def pipeline_table(rows: Sequence[Mapping]) -> str:
    """| stage | command | wall time | steps/samples | pass@1 | cons@K | pass@1 before |; a stage finished by an
    earlier run shows its own wall time, marked "(earlier run)"; pass@1 before: an SFT/GRPO stage's own
    evaluation at step 0 (the model it started from)."""
    head = ["stage", "command", "wall time", "steps/samples", "held-out pass@1", _cons_header(rows), "pass@1 before"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        wall = f"{row['wall_s']:.0f} s" + (" (earlier run)" if row.get("skipped") else "")
        count = "-" if row.get("count") is None else f"{row['count']} {row['count_name']}"
        before = row.get("pass@1_before")
        cells = [row["stage"], row["command"], wall, count, _scores(row, "pass@1"), _scores(row, "cons"),
                 "-" if before is None else f"{before:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
