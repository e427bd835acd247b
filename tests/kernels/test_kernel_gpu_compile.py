"""Every Triton kernel compiles to an sm_90 cubin (no GPU needed), with no local memory (no register spill)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.gpu  # needs no GPU, but is about GPU code: benchmarks/gpu_suite.sh runs it with the GPU tests
def test_kernels_compile_for_sm90():
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("this triton build has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(HERE / "kernel_gpu_compile.py")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.count("\nok ") + out.stdout.startswith("ok ") >= 25
