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


@pytest.mark.parametrize("completion,expected", [
    ("46<eos>", 1.0), ("46<eos><pad><pad>", 1.0), ("46<eos>99", 1.0), ("46", 0.0), ("046<eos>", 0.0),
    ("47<eos>", 0.0), ("4<eos>6", 0.0), ("<eos>", 0.0), ("", 0.0), (" 46<eos>", 0.0),
])
def test_exact_reward(completion, expected):
    assert arithmetic_reward(completion, "46") == expected


def test_reward_without_eos_requirement_and_registry():
    assert arithmetic_reward("46", "46", require_eos=False) == 1.0
    assert get_reward("arithmetic_exact")("46<eos>", {"answer": "46"}) == 1.0


def test_dataset_from_synthetic_records(tmp_path):
    tokenizer = load_tokenizer(build_arithmetic_tokenizer(tmp_path))
    ds = PromptDataset.from_records(arithmetic_problems(50, seed=1),
                                    PromptDataConfig(paths=("<arithmetic>",), template="raw", seed=1), tokenizer)
    assert len(ds) == 50 and all(len(s.prompt_ids) == 6 for s in ds.samples)
    assert tokenizer.decode(ds.samples[0].prompt_ids) == ds.samples[0].question
