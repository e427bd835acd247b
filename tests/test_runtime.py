"""Runtime: parallel layouts are validated with the numbers named, and seeding makes CPU runs repeatable."""
import pytest
import torch

from r1_megatron.models import build_model, preset
from r1_megatron.runtime import ParallelConfig, ensure_parallel_state, seed_everything


@pytest.mark.parametrize("config, world, message", [
    (ParallelConfig(tp=2), 3, r"world size 3 is not divisible by tp\*pp = 2\*1 = 2"),
    (ParallelConfig(tp=2, ep=2, etp=2), 2, r"world size 2 is not divisible by ep\*etp\*pp = 2\*2\*1 = 4"),
    (ParallelConfig(pp=4), 2, r"world size 2 is not divisible by tp\*pp = 1\*4 = 4"),
])
def test_invalid_layouts_name_the_numbers(config, world, message):
    with pytest.raises(ValueError, match=message):
        config.data_parallel_size(world)


def test_data_parallel_size_is_derived():
    assert ParallelConfig(tp=2).data_parallel_size(8) == 4
    assert ParallelConfig(tp=2, pp=2, ep=2, etp=1).data_parallel_size(8) == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(tp=0), r"ParallelConfig.tp must be a positive integer, got 0"),
    (dict(ep=-1), r"ParallelConfig.ep must be a positive integer, got -1"),
    (dict(etp=0), r"ParallelConfig.etp must be a positive integer or None, got 0"),
])
def test_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ParallelConfig(**kwargs)


def test_sequence_parallel_rules():
    assert ParallelConfig(tp=2).sequence_parallel(required=True) is True
    assert ParallelConfig(tp=2).sequence_parallel(required=False) is False
    assert ParallelConfig().sequence_parallel(required=True) is False
    with pytest.raises(ValueError, match="sp=True\\) needs tp > 1"):
        ParallelConfig(sp=True).sequence_parallel(required=False)
    with pytest.raises(ValueError, match="with tp=2 needs sequence parallel"):
        ParallelConfig(tp=2, sp=False).sequence_parallel(required=True)


def test_same_seed_same_model_and_forward():
    ensure_parallel_state()

    def run(seed):
        seed_everything(seed)
        model = build_model(preset("tiny-moe"))
        ids = torch.randint(0, 64, (2, 9))
        return [p.detach().clone() for p in model.parameters()], model(ids, None, None)

    params_a, out_a = run(3)
    params_b, out_b = run(3)
    params_c, _ = run(4)
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))
    assert torch.equal(out_a, out_b)
    assert not all(torch.equal(a, c) for a, c in zip(params_a, params_c))
