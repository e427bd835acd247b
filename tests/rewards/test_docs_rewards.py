"""docs/rewards.md's worked plugin is true: the page's module (tests/rewards/my_rewards.py is a copy, checked
here), loaded by the page's command line, registers and scores the page's table in the reward workers."""
import json
import re
from pathlib import Path

from r1_megatron.data import PromptDataConfig, PromptDataset
from r1_megatron.grpo.task import reference_warnings
from r1_megatron.rewards import RewardConfig, RewardRunner
from r1_megatron.run_config import load_run_config
from tests.doc_examples import ROOT, doc_examples, train_command

EXAMPLES = doc_examples("rewards.md")
PLUGIN = (__name__.rpartition(".")[0] + "." if "." in __name__ else "") + "my_rewards"
# the page's table: completion -> (choice_exact, format, total)
TABLE = {
    "<think>Jupiter is a gas giant.</think> <answer>(B)</answer>": (1.0, 1.0, 1.5),
    "<think>Jupiter.</think> <answer>b</answer>": (0.0, 1.0, 0.5),
    "The answer is \\boxed{B}.": (1.0, 0.0, 1.0),
    "<think>Mars?</think> <answer>A</answer>": (0.0, 1.0, 0.5),
}


def test_the_test_copy_is_the_page_module():
    assert (Path(__file__).parent / "my_rewards.py").read_text() == EXAMPLES["my_rewards.py"]


def test_the_page_table_is_what_the_workers_score(tmp_path, monkeypatch):
    page = (ROOT / "docs" / "rewards.md").read_text()
    rows = re.findall(r"^\| `(.+?)` \| ([\d.]+)[^|]*\| ([\d.]+) \| ([\d.]+) \|$", page, re.MULTILINE)
    assert {c: tuple(map(float, v)) for c, *v in rows} == TABLE
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mcq.jsonl").write_text(EXAMPLES["mcq.jsonl"])
    config, overrides = train_command(EXAMPLES["mcq command"])
    cfg = load_run_config(config, [o.replace("[my_rewards]", f"[{PLUGIN}]") for o in overrides])
    data = PromptDataConfig(paths=tuple(cfg.data.paths), answer_format=cfg.data.answer_format)
    sample = PromptDataset(data).samples[0].reward_sample()
    rewards = RewardConfig(weights=cfg.rewards.weights, reward_kwargs=cfg.rewards.reward_kwargs, num_workers=1,
                           plugin_modules=tuple(cfg.rewards.plugin_modules))
    with RewardRunner(rewards) as runner:
        batch = runner.score(list(TABLE), [sample] * len(TABLE))
    assert batch.failure == [None] * len(TABLE)
    got = list(zip(batch.per_reward["choice_exact"], batch.per_reward["format"], batch.total))
    assert got == list(TABLE.values())


def test_the_plugin_check_warns_about_references_that_are_not_letters(tmp_path):
    path = tmp_path / "mcq.jsonl"
    path.write_text("".join(json.dumps({"question": "q", "answer": a}) + "\n" for a in ["B", "Jupiter"]))
    cfg = load_run_config(None, ["data.synthetic=null", "warm_start.max_steps=0", f"data.paths=[{path}]",
                                 f"rewards.plugin_modules=[{PLUGIN}]",
                                 "rewards.weights={choice_exact: 1.0}", "rewards.accuracy=choice_exact"])
    dataset = PromptDataset(PromptDataConfig(paths=(str(path),), shuffle=False))
    assert reference_warnings(cfg, dataset) == [
        f"warning: choice_exact cannot use the answer of 1 of the 2 records checked (50%), so it scores 0 on them; "
        f"first: {path}:2: 'Jupiter': the answer is not one of the letters A, B, C, D, E; check data.answer_field "
        f"and data.answer_format (gsm8k, boxed, raw)"]
