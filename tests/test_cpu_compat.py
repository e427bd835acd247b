"""The CPU adaptation of Megatron stays inside Megatron: after it is applied, torch behaves for everyone else as it
did (no function-mode hook on every call, `with torch.device(...)` intact), and Megatron's device="cuda" allocations
land on the CPU."""
import pytest
import torch

from r1_megatron import cpu_compat
from r1_megatron.runtime import ensure_parallel_state

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU adaptation applies only without CUDA")


def test_torch_is_unchanged_outside_megatron():
    ensure_parallel_state()  # applies the adaptation
    assert torch._C._len_torch_function_stack() == 0  # no TorchFunctionMode on every op of every user
    with torch.device("meta"):  # what transformers builds models under before loading weights
        assert torch.arange(3).device.type == "meta" and torch.zeros(2).device.type == "meta"
    with pytest.raises((AssertionError, RuntimeError)):  # a user's own CUDA allocation still fails loudly
        torch.zeros(1, device="cuda")


def test_megatron_allocations_on_cuda_land_on_the_cpu():
    import megatron.core.optimizer.clip_grads as clip_grads

    ensure_parallel_state()
    for name in cpu_compat._ALLOCATE_ON_CUDA:
        assert __import__(name, fromlist=["torch"]).torch.zeros(1, device="cuda").device.type == "cpu", name
    grads = [torch.ones(3)]
    assert clip_grads.get_grad_norm_fp32(grads) == pytest.approx(3 ** 0.5)  # allocates with device="cuda"
