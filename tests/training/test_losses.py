"""next_token_cross_entropy on the fused kernel equals what it replaced, Megatron's vocab_parallel_cross_entropy on
fp32-upcast logits, masked and summed (both the reference and, marked `triton`, the interpreted Triton path)."""
import pytest
import torch

from r1_megatron.runtime import ensure_parallel_state
from r1_megatron.training.losses import next_token_cross_entropy
from r1_megatron.training.micro_batch import MicroBatch


def _megatron_masked_sum(logits_BTV, mb):
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    return (vocab_parallel_cross_entropy(logits_BTV.float(), mb.labels) * mb.loss_mask).sum()


@pytest.mark.parametrize("kernel", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_equals_megatron_vocab_parallel_cross_entropy(kernel, dtype):
    ensure_parallel_state()
    g = torch.Generator().manual_seed(0)
    B, T, V = 3, 5, 77
    logits = (3 * torch.randn(B, T, V, generator=g)).to(dtype)
    mask = (torch.rand(B, T, generator=g) > 0.3).float()
    mb = MicroBatch(torch.zeros(B, T, dtype=torch.long), torch.randint(0, V, (B, T), generator=g), mask)
    ours_x, theirs_x = (logits.clone().requires_grad_() for _ in range(2))
    loss, count = next_token_cross_entropy(ours_x, mb)
    want = _megatron_masked_sum(theirs_x, mb)
    assert count == mask.sum() and abs(loss.item() - want.item()) <= 1e-5 * want.item()
    loss.backward()
    want.backward()
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # the kernel stores the gradient in the logits' dtype
    assert ours_x.grad.dtype == dtype and (ours_x.grad.float() - theirs_x.grad.float()).abs().max() <= tol
