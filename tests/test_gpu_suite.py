"""benchmarks/gpu_suite.sh: its dry run (safe on CPU) lists every benchmarks/bench_*.py, so a new benchmark cannot
be left out of the GPU suite (nor out of benchmarks/README.md's index); and its step runner (statuses, timeouts, skips, the budget, the summary JSON, the exit
status), driven here by a plan of shell commands that need no GPU."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"


def _suite(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHON=sys.executable, R1_BENCH_RESULTS=str(tmp_path / "results"),
                   R1_BENCH_TAG="test", **env)
    return subprocess.run(["bash", str(SUITE), *args], cwd=tmp_path, env=environ, capture_output=True, text=True,
                          timeout=120)


def _benchmarks() -> set[str]:
    """The bench_*.py that run as scripts (bench_common.py is the helpers they share)."""
    found = {p.name for p in (ROOT / "benchmarks").glob("bench_*.py") if '__name__ == "__main__"' in p.read_text()}
    assert {"bench_generate.py", "bench_grpo_step.py", "bench_rmsnorm.py"} <= found
    return found


def test_readme_indexes_every_benchmark():
    indexed = set(re.findall(r"`(bench_\w+\.py)`", (ROOT / "benchmarks" / "README.md").read_text()))
    assert _benchmarks() <= indexed, f"not in benchmarks/README.md: {sorted(_benchmarks() - indexed)}"


def test_dry_run_plans_every_benchmark_and_runs_nothing(tmp_path):
    out = _suite("--dry-run", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    planned = set(re.findall(r"benchmarks/(bench_\w+\.py)", out.stdout))
    present = _benchmarks()
    assert present <= planned, f"benchmarks missing from gpu_suite.sh's plan: {sorted(present - planned)}"
    assert "bench_decode_attention.py" in planned  # listed before it lands (skipped while absent)
    assert re.search(r"^step gpu_tests .*pytest -m gpu", out.stdout, re.M)
    assert "results/generate_test.json" in out.stdout and "gpu_suite_test.json" in out.stdout
    assert not (tmp_path / "results").exists()  # a dry run writes nothing


def test_dry_run_only_selects_steps(tmp_path):
    out = _suite("--dry-run", "--only", "generate,sft", tmp_path=tmp_path)
    assert [line.split()[1] for line in out.stdout.splitlines() if line.startswith("step ")] == ["generate", "sft"]


PLAN = """\
# name | timeout | needs | output | command
ok|20|-|{res}/ok.json|echo '{{"fine": true}}' > $OUT
fails|20|-|-|echo broken >&2; exit 3
slow|1|-|-|sleep 20
absent|20|-|-|python benchmarks/bench_not_written_yet.py
needs_module|20|json,no_such_module_r1|-|true
"""


def test_runner_records_every_step_and_fails_the_suite(tmp_path):
    plan = tmp_path / "plan.txt"
    plan.write_text(PLAN.format(res=tmp_path / "results"))
    out = _suite("--plan", str(plan), tmp_path=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    summary = json.loads((tmp_path / "results" / "gpu_suite_test.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == ["ok", "fails", "slow", "absent", "needs_module"]
    assert (steps["ok"]["status"], steps["ok"]["rc"]) == ("passed", 0)
    assert json.loads(Path(steps["ok"]["output"]).read_text()) == {"fine": True}
    assert (steps["fails"]["status"], steps["fails"]["rc"]) == ("failed", 3)
    assert "broken" in Path(steps["fails"]["log"]).read_text()
    assert steps["slow"]["status"] == "timeout" and steps["slow"]["rc"] == 124 and steps["slow"]["wall_s"] < 15
    assert steps["absent"]["status"] == "skipped" and "bench_not_written_yet.py is absent" in steps["absent"]["reason"]
    assert steps["needs_module"]["status"] == "skipped" and "no_such_module_r1" in steps["needs_module"]["reason"]
    assert "json" not in steps["needs_module"]["reason"]
    assert summary["failed"] == ["fails", "slow"]
    assert all(isinstance(s["wall_s"], float) and s["command"] for s in summary["steps"])


@pytest.mark.parametrize("budget,expected_rc,status", [("600", 0, "passed"), ("10", 1, "not_run")])
def test_budget_and_all_passing_exit_status(tmp_path, budget, expected_rc, status):
    plan = tmp_path / "plan.txt"
    plan.write_text("a|20|-|-|true\nb|20|-|-|true\n")
    out = _suite("--plan", str(plan), tmp_path=tmp_path, R1_SUITE_BUDGET_S=budget)
    assert out.returncode == expected_rc, out.stdout + out.stderr
    summary = json.loads((tmp_path / "results" / "gpu_suite_test.json").read_text())
    assert [s["status"] for s in summary["steps"]] == [status, status]
