"""The synthetic arithmetic task: deterministic problems, exact reward, and its registry entry."""
import pytest

from r1_megatron.data import (ArithmeticConfig, PromptDataConfig, PromptDataset, arithmetic_problems,
                              arithmetic_reward, build_arithmetic_tokenizer)
from r1_megatron.rewards import get_reward
from r1_megatron.tokenizer import load_tokenizer


def test_problems_are_deterministic_and_correct():
    problems = arithmetic_problems(200, seed=5)
    assert problems == arithmetic_problems(200, seed=5)
    assert problems != arithmetic_problems(200, seed=6)
    for p in problems:
        a, b = p["question"].rstrip("=").split("+")
        assert len(a) == len(b) == 2 and p["answer"] == str(int(a) + int(b))
    assert {p["question"][:2] for p in problems} != {problems[0]["question"][:2]}  # operands vary
    wide = arithmetic_problems(5, seed=0, config=ArithmeticConfig(num_digits=3, pad=False))
    assert all(int(p["answer"]) == sum(map(int, p["question"][:-1].split("+"))) for p in wide)
    with pytest.raises(ValueError, match="num_digits"):
        ArithmeticConfig(num_digits=0)


@pytest.mark.parametrize("completion,stopped,expected", [
    ("46", True, 1.0), ("46", False, 0.0), ("046", True, 0.0), ("47", True, 0.0), ("4<pad>6", True, 0.0),
    ("", True, 0.0), (" 46", True, 0.0), ("46<pad>", True, 0.0),
])
def test_exact_reward(completion, stopped, expected):
    """The completion as the trainer gives it to rewards: decoded without the <eos> that ended it (`stopped`)."""
    assert arithmetic_reward(completion, "46", stopped=stopped) == expected


def test_reward_without_eos_requirement_and_registry():
    assert arithmetic_reward("46", "46", stopped=False, require_eos=False) == 1.0
    reward = get_reward("arithmetic_exact")
    assert reward("46", {"answer": "46", "finish_reason": "stop"}) == 1.0
    assert reward("46", {"answer": "46", "finish_reason": "length"}) == 0.0  # truncated: never saw its <eos>


def test_dataset_from_synthetic_records(tmp_path):
    tokenizer = load_tokenizer(build_arithmetic_tokenizer(tmp_path))
    ds = PromptDataset.from_records(arithmetic_problems(50, seed=1),
                                    PromptDataConfig(paths=("<arithmetic>",), template="raw", seed=1), tokenizer)
    assert len(ds) == 50 and all(len(s.prompt_ids) == 6 for s in ds.samples)
    assert tokenizer.decode(ds.samples[0].prompt_ids) == ds.samples[0].question


def _build_and_load_repeatedly(directory: str, rounds: int) -> None:
    for _ in range(rounds):
        load_tokenizer(build_arithmetic_tokenizer(directory))


def test_ranks_building_the_tokenizer_at_once_never_read_a_partial_file(tmp_path):
    # Every rank of a multi-process run builds the demo tokenizer into the same run directory at the same time; a
    # rank must never load a file that another rank has just truncated (this once failed a 2-rank run in CI).
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_build_and_load_repeatedly, args=(str(tmp_path / "tok"), 60)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert sorted(f.name for f in (tmp_path / "tok").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
