"""What a user gets with the repository: a license they can act on, and no reference to files it does not ship."""
import importlib.metadata
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the notes the project was started from lived beside the repository; its users have none of them
OUTSIDE = re.compile(r"shared/docs|demo_spike|hf_parity_spike|megatron_cpu_spike|\.\./shared|/work/")


def test_the_license_is_mit_in_the_repository_and_the_package_metadata():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert importlib.metadata.metadata("r1_megatron")["License"] == "MIT"


def test_nothing_points_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = [f"{name}:{n}" for name in files if name != "tests/test_packaging.py" and (ROOT / name).is_file()
                 for n, line in enumerate((ROOT / name).read_text(errors="replace").splitlines(), start=1)
                 if OUTSIDE.search(line)]
    assert not offenders, offenders
