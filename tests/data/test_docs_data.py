"""docs/data.md's worked examples are true: its files, loaded with its command lines' configs, give the
documented references, and its completions score what the page says."""
import pytest

from r1_megatron.data import PromptDataset, build_arithmetic_tokenizer
from r1_megatron.grpo.task import prompt_data_config
from r1_megatron.rewards import get_reward
from r1_megatron.run_config import load_run_config
from r1_megatron.tokenizer import load_tokenizer
from tests.doc_examples import doc_examples, train_command

EXAMPLES = doc_examples("data.md")


@pytest.mark.parametrize("name, references, scores", [
    ("gsm8k", ["72", "10"], {"math_accuracy": 1.0, "format": 1.0}),
    ("code", [None, None], {"code_tests": 1.0, "format": 1.0}),
])
def test_worked_example(name, references, scores, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the commands name the data files relative to where they run
    (tmp_path / f"{name}_train.jsonl").write_text(EXAMPLES[f"{name}_train.jsonl"])
    cfg = load_run_config(*train_command(EXAMPLES[f"{name} command"]))
    # the recipe's max_prompt_tokens needs a tokenizer; the model's would give other counts, not other records
    tokenizer = load_tokenizer(build_arithmetic_tokenizer(tmp_path / "tok"))
    dataset = PromptDataset(prompt_data_config(cfg.data), tokenizer)
    first = next(s for s in dataset.samples if s.source.endswith(":1"))
    assert [s.answer for s in sorted(dataset.samples, key=lambda s: s.source)] == references
    assert dataset.notes() == []  # answer_format was chosen explicitly, nothing skipped or dropped
    completion = EXAMPLES[f"{name} completion"].rstrip("\n")
    assert {r: get_reward(r)(completion, first.reward_sample()) for r in cfg.rewards.weights} == scores
