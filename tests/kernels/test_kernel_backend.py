"""Dispatch rule: Triton on CUDA or under TRITON_INTERPRET=1, the reference otherwise; R1_MEGATRON_KERNELS forces."""
import importlib
import subprocess
import sys

import pytest
import torch

from r1_megatron.kernels import Backend, grpo_loss, reference, select_backend
from r1_megatron.kernels.backend import FORCE_ENV

CPU = torch.zeros(2)
grpo_loss_module = importlib.import_module("r1_megatron.kernels.grpo_loss")  # the attribute is the function


def test_rule(monkeypatch):
    monkeypatch.delenv(FORCE_ENV, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert select_backend(CPU, None) is Backend.TRITON
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert select_backend(CPU) is Backend.TORCH
    monkeypatch.setenv(FORCE_ENV, "triton")
    with pytest.raises(RuntimeError, match="CUDA tensors or TRITON_INTERPRET=1"):
        select_backend(CPU)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert select_backend(CPU) is Backend.TRITON
    monkeypatch.setenv(FORCE_ENV, "torch")
    assert select_backend(CPU) is Backend.TORCH
    monkeypatch.setenv(FORCE_ENV, "cuda")
    with pytest.raises(ValueError, match="R1_MEGATRON_KERNELS='cuda'"):
        select_backend(CPU)


def test_forced_torch_never_touches_triton(monkeypatch):
    monkeypatch.setenv(FORCE_ENV, "torch")

    def no_triton(name):
        raise AssertionError(f"imported {name}")

    monkeypatch.setattr(grpo_loss_module, "triton_module", no_triton)
    x = torch.randn(1, 3, 11)
    args = (x, torch.randint(0, 11, (1, 3)), torch.full((1, 3), -2.0), None, torch.ones(1), torch.ones(1, 3))
    loss, stats = grpo_loss(*args)
    ref_loss, ref_stats = reference.grpo_loss(*args)
    assert torch.equal(loss, ref_loss) and torch.equal(stats["logp"], ref_stats["logp"])


def test_package_imports_and_runs_without_triton():
    code = (
        "import sys, os; sys.modules['triton'] = None; os.environ['TRITON_INTERPRET'] = '1'\n"
        "import torch\n"
        "import r1_megatron.kernels as k\n"
        "from r1_megatron.kernels.backend import triton_available\n"
        "assert not triton_available() and k.select_backend(torch.zeros(1)) is k.Backend.TORCH\n"
        "x = torch.randn(2, 3, 5)\n"
        "loss, _ = k.grpo_loss(x, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), None, torch.ones(2),"
        " torch.ones(2, 3))\n"
        "k.token_logprobs(x, torch.zeros(2, 3, dtype=torch.long)); k.rms_norm(x, torch.ones(5))\n"
        "print(k.group_advantages(torch.tensor([1., 0., 1., 0.]), 4).tolist())\n"
        "assert 'triton' not in [m.split('.')[0] for m, v in sys.modules.items() if v is not None]\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("[0.866")
