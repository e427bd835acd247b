"""docs/sampling.md's worked example is what the code does: its command loads, and its four responses get the
results its table says (with the real math_accuracy reward)."""
import re
import shlex

from r1_megatron.rewards.registry import get_reward
from r1_megatron.run_config import load_run_config
from r1_megatron.sampling.config import SampleRunConfig
from r1_megatron.sampling.selection import Drawn, Selector
from tests.doc_examples import ROOT, doc_examples

_ROW = re.compile(r"^\| (?P<j>\d) \| `(?P<text>.+?)` \| (?:rejected: `(?P<filter>\w+)`|kept)", re.MULTILINE)


def test_the_worked_example_command_loads_and_its_responses_get_the_documented_results():
    words = shlex.split(doc_examples("sampling.md")["sample-command"].replace("\\\n", " "))
    assert words[:2] == ["r1-megatron", "sample"]
    overrides = [w for w in words[2:] if "=" in w and not w.startswith("-")]
    cfg = load_run_config(None, overrides + ["model.path=m", "data.paths=[p.jsonl]"], cls=SampleRunConfig)
    assert cfg.keep.max_per_prompt == 2 and cfg.filters.max_paragraph_chars == 800
    rows = list(_ROW.finditer((ROOT / "docs" / "sampling.md").read_text()))
    assert [int(r["j"]) for r in rows] == [0, 1, 2, 3]
    rewards = {name: get_reward(name) for name in cfg.rewards.weights}
    drawn = [Drawn(int(r["j"]), r["text"], {n: fn(r["text"], {"answer": "7"}) for n, fn in rewards.items()}, 0.0,
                   "stop") for r in rows]
    decisions = Selector(cfg.keep, cfg.filters).select("What is 3 + 4?", drawn)
    assert [d.rejected_by for d in decisions] == [r["filter"] for r in rows]
    assert decisions[1].filters["language"]["consistency"] == 8 / 15
    assert (decisions[2].reasoning, decisions[2].summary) == ("Three plus four is seven.", r"The answer is \boxed{7}.")
