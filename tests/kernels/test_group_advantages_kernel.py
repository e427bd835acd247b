"""Triton group_advantages (interpreted): hand-worked values, the float64 reference, and NaN rejection."""
import math

import pytest
import torch

from r1_megatron.kernels import group_advantages, reference
from r1_megatron.kernels.backend import Backend, select_backend

S = math.sqrt(3) / 2  # rewards [1,0,1,0]: mean 0.5, sample std sqrt(1/3) → ±0.5/0.5774 = ±0.8660


@pytest.fixture(autouse=True)
def _triton_path():
    assert select_backend(torch.zeros(1)) is Backend.TRITON


@pytest.mark.parametrize("impl", [group_advantages, reference.group_advantages], ids=["triton", "reference"])
@pytest.mark.parametrize("rewards,group_size,std,expected", [
    ([1, 0, 1, 0], 4, "sample", [S, -S, S, -S]),
    ([1, 0, 1, 0], 4, "population", [1, -1, 1, -1]),  # population std 0.5
    ([1, 0, 1, 0], 4, "none", [0.5, -0.5, 0.5, -0.5]),
    ([1, 0, 0.3, 0.3, 0.3, 0.3], 2, "sample", [0.7071, -0.7071, 0, 0, 0, 0]),  # all-equal groups → exactly 0
    ([0.1, 0.1, 0.1, 2.0, 4.0, 0.0], 3, "sample", [0, 0, 0, 0, 1, -1]),
    ([3.0, -1.0, 0.5], 1, "sample", [0, 0, 0]),  # groups of one
    ([3.0, -1.0, 0.5], 1, "none", [0, 0, 0]),
], ids=lambda v: str(v) if not isinstance(v, list) else None)
def test_hand_worked_values(impl, rewards, group_size, std, expected):
    adv = impl(torch.tensor(rewards, dtype=torch.float32), group_size, std=std, eps=0.0)
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float32), atol=1e-4, rtol=0)
    all_equal = torch.tensor(rewards).view(-1, group_size)
    all_equal = (all_equal.amax(1) == all_equal.amin(1)).repeat_interleave(group_size)
    assert (adv[all_equal] == 0).all()  # exactly zero, not rounding noise / eps


def test_eps_is_in_the_denominator():
    adv = group_advantages(torch.tensor([1.0, 0.0]), 2, std="population", eps=0.5)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5]))  # 0.5 / (0.5 + 0.5)


@pytest.mark.parametrize("std", ["sample", "population", "none"])
@pytest.mark.parametrize("groups,group_size", [(37, 16), (5, 3), (3, 64), (300, 1)])
def test_matches_float64_reference(std, groups, group_size):
    g = torch.Generator().manual_seed(groups * group_size)
    rewards = torch.randint(0, 3, (groups * group_size,), generator=g).float() + 0.1 * torch.randn(
        groups * group_size, generator=g) * (torch.rand(groups * group_size, generator=g) > 0.5)
    gold = reference.group_advantages(rewards.double(), group_size, std=std)
    got = group_advantages(rewards, group_size, std=std)
    assert got.dtype == torch.float32 and got.shape == rewards.shape
    torch.testing.assert_close(got.double(), gold, rtol=1e-5, atol=1e-5)


def test_integer_and_bool_rewards_give_float_advantages():
    got = group_advantages(torch.tensor([1, 0, 1, 0]), 4)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor([S, -S, S, -S]), atol=1e-4, rtol=0)
    torch.testing.assert_close(group_advantages(torch.tensor([True, False, True, False]), 4), got)


@pytest.mark.parametrize("impl", [group_advantages, reference.group_advantages], ids=["triton", "reference"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_rejects_non_finite_rewards(impl, bad):
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, bad, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"rewards\[5\]=.*group 2"):
        impl(rewards, 2)


@pytest.mark.parametrize("kw,needle", [
    (dict(group_size=3), "not a multiple of group_size=3"),
    (dict(group_size=0), "group_size=0"),
    (dict(group_size=2, std="median"), "std='median'"),
    (dict(group_size=2, eps=-1.0), "eps=-1.0"),
])
def test_bad_arguments_name_the_value(kw, needle):
    with pytest.raises(ValueError, match=needle):
        group_advantages(torch.zeros(4), **kw)
    with pytest.raises(ValueError, match="rewards: expected a 1-D"):
        group_advantages(torch.zeros(2, 2), 2)
