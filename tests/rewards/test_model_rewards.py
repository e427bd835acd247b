"""Model rewards in the reward pipeline: the weighted sum over the rewards of each sample's kind (hand-worked), the
rule rewards a kind does not use left unrun, the config's checks, and what a preference model reads."""
import json

import pytest

from r1_megatron.data.prompt_dataset import PromptDataConfig, PromptDataset
from r1_megatron.grpo.config import DataConfig, GRPORunConfig, ModelRewardConfig, RewardsConfig
from r1_megatron.rewards.model_rewards import build_reward_scorer, conversation_text, reward_target
from r1_megatron.rewards.registry import model_reward_kinds, register_model_reward
from r1_megatron.rewards.runner import RewardRunner


class SummaryLength:
    """A stand-in model reward: the length of the completion's target text (what a model would read)."""

    def __init__(self, name, cfg, *, tokenizer=None):
        self.cfg, self.calls, self.counts = cfg, [], {"seen": 0.0}

    def score(self, texts, samples):
        self.calls.append(list(texts))
        self.counts = {"seen": float(len(texts))}
        return [float(len(reward_target(t, self.cfg.target))) for t in texts]

    def close(self):
        self.closed = True


register_model_reward("test_length", SummaryLength)


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "config.json").write_text("{}")
    return str(tmp_path / "rm")


def rewards_config(model_dir, **overrides) -> RewardsConfig:
    fields = dict(weights={"exact_answer": 2.0, "starts_with_one": 0.5, "length": 0.25},
                  models={"length": {"kind": "test_length", "path": model_dir}},
                  kinds={"math": ["exact_answer", "starts_with_one"], "chat": ["length"]},
                  accuracy="exact_answer", format=None, num_workers=1, plugin_modules=["tests.grpo.reward_plugin"])
    return RewardsConfig(**{**fields, **overrides})


def test_the_total_is_the_weighted_sum_over_the_rewards_of_each_kind(model_dir):
    cfg = rewards_config(model_dir)
    texts = ["<think>x</think>12", "1</think>7", "abc</think> hello ", "1</think>12"]
    samples = [{"answer": "12", "kind": "math"}, {"answer": "8", "kind": "math"},
               {"answer": None, "kind": "chat"}, {"answer": "12", "kind": "math"}]
    with build_reward_scorer(cfg, RewardRunner(cfg.runner_config())) as scorer:
        batch = scorer.score(texts, samples)
        length = scorer.models["length"]
    # exact_answer would raise on the chat sample's missing answer: not run for it, so no failure
    assert batch.failure == [None] * 4
    assert batch.per_reward == {"exact_answer": [1.0, 0.0, 0.0, 1.0], "starts_with_one": [0.0, 1.0, 0.0, 1.0],
                                "length": [0.0, 0.0, 5.0, 0.0]}
    assert batch.total == [2.0, 0.5, 1.25, 2.5]  # 2·1; 0.5·1; 0.25·len("hello"); 2·1 + 0.5·1
    assert length.calls == [["abc</think> hello "]] and length.closed  # only its kind's samples
    metrics = batch.metrics()
    assert metrics["reward/exact_answer_mean"] == pytest.approx(2 / 3)  # over the three math samples
    assert metrics["reward/length_mean"] == 5.0 and metrics["reward/length_seen"] == 1.0
    assert metrics["reward/total_mean"] == pytest.approx(6.25 / 4)


def test_without_kinds_every_reward_scores_every_sample(model_dir):
    cfg = rewards_config(model_dir, weights={"starts_with_one": 1.0, "length": -0.5}, kinds={},
                         accuracy="starts_with_one")
    with build_reward_scorer(cfg, RewardRunner(cfg.runner_config())) as scorer:
        batch = scorer.score(["ab", "1</think>xyz"], [{}, {}])
    assert batch.per_reward == {"starts_with_one": [0.0, 1.0], "length": [2.0, 3.0]}
    assert batch.total == [-1.0, -0.5]  # 1·0 − 0.5·2; 1·1 − 0.5·3


def test_no_model_rewards_and_no_kinds_is_the_rule_runner_itself():
    cfg = RewardsConfig(weights={"format": 1.0}, accuracy=None, num_workers=1)
    marker = object()
    assert build_reward_scorer(cfg, marker) is marker


def test_a_model_only_config_needs_no_reward_workers(model_dir):
    cfg = rewards_config(model_dir, weights={"length": 1.0}, kinds={}, accuracy=None)
    assert cfg.runner_config() is None and cfg.rule_weights == {}


def test_a_sample_of_an_unlisted_kind_is_refused(model_dir):
    cfg = rewards_config(model_dir, weights={"length": 1.0}, kinds={"chat": ["length"]}, accuracy=None)
    with build_reward_scorer(cfg, None) as scorer:
        with pytest.raises(ValueError, match=r"rewards.kinds has no entry for kind 'code' \(kinds: chat\)"):
            scorer.score(["x"], [{"kind": "code"}])


@pytest.mark.parametrize("overrides, message", [
    (dict(models={"length": {"kind": "test_length", "path": "/no/such/rm"}}),
     r"rewards.models.length.path='/no/such/rm': no such directory"),
    (dict(models={"length": {"kind": "nope", "path": "."}}), r"rewards.models.length.kind must be one of"),
    (dict(models={"length": {"kind": "test_length", "path": "MODEL", "target": "all"}}),
     r"rewards.models.length.target must be one of \('summary', 'response'\), got 'all'"),
    (dict(models={"length": {"kind": "judge", "path": "MODEL", "prompt": "{question} {answer}"}}),
     r"rewards.models.length.prompt: may only use \{question\}, \{reference\}, \{response\}"),
    (dict(weights={"exact_answer": 1.0}, kinds={}), r"rewards.models.length has no weight"),
    (dict(kinds={"math": ["exact_answer", "lenght"]}), r"rewards.kinds.math names \['lenght'\]"),
    (dict(reward_kwargs={"length": {"x": 1}}), r"rewards.reward_kwargs names the model reward 'length'"),
    (dict(models={"format": {"kind": "test_length", "path": "MODEL"}}, weights={"format": 1.0}, kinds={},
          accuracy=None), r"rewards.models.format: the name is a registered rule reward"),
])
def test_config_errors_name_the_key(model_dir, overrides, message):
    if "models" in overrides:
        for m in overrides["models"].values():
            m["path"] = model_dir if m["path"] == "MODEL" else m["path"]
    with pytest.raises(ValueError, match=message):
        rewards_config(model_dir, **overrides)


def test_kinds_without_a_kind_field_need_a_default_entry(model_dir):
    with pytest.raises(ValueError, match=r"rewards.kinds has no 'default' entry, and data.kind_field is null"):
        GRPORunConfig(rewards=rewards_config(model_dir))
    cfg = GRPORunConfig(rewards=rewards_config(model_dir, weights={"arithmetic_exact": 1.0, "length": 1.0},
                                               kinds={"default": ["arithmetic_exact", "length"]},
                                               accuracy="arithmetic_exact"))
    assert isinstance(cfg.rewards.models["length"], ModelRewardConfig)


def test_registered_model_kinds():
    assert {"preference", "judge"} <= set(model_reward_kinds())


def test_prompts_carry_their_kind_and_question(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"question": "2+2?", "answer": "4", "type": "math"},
                                                      {"question": "Hi", "answer": "x", "type": "chat"}]) + "\n")
    dataset = PromptDataset(PromptDataConfig(paths=(str(path),), kind_field="type", template="raw", shuffle=False))
    assert [s.reward_sample() for s in dataset.samples] == [
        {"answer": "4", "tests": None, "question": "2+2?", "kind": "math"},
        {"answer": "x", "tests": None, "question": "Hi", "kind": "chat"}]
    plain = PromptDataset(PromptDataConfig(paths=(str(path),), template="raw", shuffle=False))
    assert {s.kind for s in plain.samples} == {"default"}
    assert DataConfig(paths=[str(path)], kind_field="type").kind_field == "type"


def test_what_a_model_reward_reads():
    text = "<think>a</think> b </think> the summary "
    assert reward_target(text, "summary") == "the summary" and reward_target(text, "response") == text
    assert reward_target("no think block", "summary") == "no think block"

    class Plain:
        chat_template = None
    assert conversation_text(Plain(), "Q?", "A.") == "Q?\nA."


def test_the_docs_example_loads_and_a_missing_model_directory_is_one_line_naming_the_key(tmp_path, monkeypatch):
    from r1_megatron.run_config import ConfigError, load_run_config
    from tests.doc_examples import doc_examples

    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipe.yaml").write_text(doc_examples("rewards.md")["model rewards"])
    (tmp_path / "models" / "reward_model").mkdir(parents=True)
    (tmp_path / "models" / "reward_model" / "config.json").write_text("{}")
    cfg = load_run_config(tmp_path / "recipe.yaml")
    assert cfg.data.kind_field == "type" and cfg.rewards.rule_weights == {"math_accuracy": 1.0, "format": 1.0}
    assert cfg.rewards.models["helpful"].kind == "preference" and cfg.rewards.kinds["general"] == ["helpful"]
    with pytest.raises(ConfigError) as error:
        load_run_config(tmp_path / "recipe.yaml", ["rewards.models.helpful.path=models/rm"])
    assert "rewards.models.helpful.path='models/rm': no such directory" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_preference_reward_reads_its_target_in_the_reward_models_chat_template(tmp_path):
    import torch
    from transformers import AutoTokenizer, Qwen2ForSequenceClassification

    from r1_megatron.parallel import initialize
    from r1_megatron.rewards.model_rewards import PreferenceReward
    from r1_megatron.tokenizer import load_tokenizer
    from tests.grpo.test_model_reward_run import write_reward_model

    initialize()
    directory = write_reward_model(tmp_path / "rm")
    texts = ["<think>3 and 4 make 7</think> The sum is 7. ", "no reasoning block", "<think>a</think>"]
    samples = [{"question": "What is 3 + 4?"}, {"question": "Hi"}, {"question": "Q"}]
    hf_tokenizer, tokenizer = AutoTokenizer.from_pretrained(directory), load_tokenizer(directory)
    hf = Qwen2ForSequenceClassification.from_pretrained(directory).float().eval()
    for target, read in (("summary", ["The sum is 7.", "no reasoning block", ""]), ("response", texts)):
        reward = PreferenceReward("rm", ModelRewardConfig(kind="preference", path=str(directory), dtype="fp32",
                                                          target=target, batch_size=2))
        expected = []
        for question, answer in zip([s["question"] for s in samples], read):
            # transformers renders the conversation; the RM directory's tokenizer.json encodes it (transformers 5
            # re-splits digits for a qwen2 config, a tokenizer difference that is not the reward's to test)
            ids = tokenizer.encode(hf_tokenizer.apply_chat_template([{"role": "user", "content": question},
                                                                     {"role": "assistant", "content": answer}],
                                                                    tokenize=False))
            with torch.no_grad():
                expected.append(hf(torch.tensor([ids])).logits[0, 0].item())
        assert reward.score(texts, samples) == pytest.approx(expected, abs=1e-5)
