"""A GRPO run whose reward is a rule reward and a preference reward model in one weighted sum: both components
are logged, the total is their weighted sum, and the RM's component is transformers' score of what it read."""
import json

import pytest
import torch

from r1_megatron.grpo.config import (AlgorithmConfig, CheckpointConfig, DataConfig, GRPORunConfig, LoggingConfig,
                                     ModelSourceConfig, RewardsConfig, RolloutConfig)
from r1_megatron.grpo.trainer import GRPOTrainer
from r1_megatron.training.optimizer import OptimizerSettings
from tests.models.hf_fixtures import CHAT_VOCAB, chat_tokenizer, perturb_

RM_WEIGHT = 0.5


def write_reward_model(directory):
    """A tiny random Qwen2ForSequenceClassification with the chat tokenizer (its template renders the RM input)."""
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    tokenizer = chat_tokenizer()
    torch.manual_seed(3)
    config = Qwen2Config(vocab_size=CHAT_VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForSequenceClassification(config).float().eval()
    perturb_(model, 4)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from r1_megatron.models import build_model, preset, save_hf
    from r1_megatron.parallel import initialize
    from r1_megatron.runtime import seed_everything

    root = tmp_path_factory.mktemp("model_reward_run")
    initialize()
    seed_everything(0)
    policy = save_hf(build_model(preset("demo-moe")), root / "init")
    rm = write_reward_model(root / "rm")
    cfg = GRPORunConfig(
        run_dir=str(root / "run"), steps=2, seed=0, model=ModelSourceConfig(path=str(policy), dtype="fp32"),
        data=DataConfig(synthetic="arithmetic", template="raw", num_synthetic=50),
        rollout=RolloutConfig(prompts_per_step=2, group_size=4, max_new_tokens=4, max_batch_size=8),
        algorithm=AlgorithmConfig(kl_coef=0.0, micro_batch_size=8),
        optimizer=OptimizerSettings(lr=1e-3, warmup_steps=0),
        rewards=RewardsConfig(weights={"starts_with_one": 1.0, "rm": RM_WEIGHT}, accuracy=None, format=None,
                              models={"rm": {"kind": "preference", "path": str(rm), "dtype": "fp32"}},
                              num_workers=1, plugin_modules=["tests.grpo.reward_plugin"]),
        checkpoint=CheckpointConfig(every_steps=100), logging=LoggingConfig(tensorboard=False, progress=False))
    GRPOTrainer(cfg).train()
    return root


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_both_components_are_logged_and_the_total_is_their_weighted_sum(run):
    metrics = lines(run / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert {"reward/starts_with_one_mean", "reward/rm_mean", "reward/total_mean"} <= m.keys()
        assert m["reward/total_mean"] == pytest.approx(m["reward/starts_with_one_mean"] +
                                                       RM_WEIGHT * m["reward/rm_mean"], abs=1e-6)
        assert m["reward/rm_mean"] != 0.0 and m["reward/errors"] == 0


def test_the_reward_model_component_is_transformers_score_of_the_conversation(run):
    from transformers import AutoTokenizer, Qwen2ForSequenceClassification

    from r1_megatron.tokenizer import load_tokenizer

    # transformers renders the conversation; the directory's tokenizer.json encodes it (see test_model_rewards.py)
    hf_tokenizer, tokenizer = AutoTokenizer.from_pretrained(run / "rm"), load_tokenizer(run / "rm")
    rm = Qwen2ForSequenceClassification.from_pretrained(run / "rm").float().eval()
    shown = lines(run / "run" / "samples.jsonl")
    assert len(shown) == 4  # one completion of each of the 2 prompts, 2 steps
    for s in shown:
        assert s["rewards"].keys() == {"starts_with_one", "rm"}
        assert s["reward"] == pytest.approx(s["rewards"]["starts_with_one"] + RM_WEIGHT * s["rewards"]["rm"],
                                            abs=1e-6)
        # raw template: the prompt is the question; no </think> in the completion: the summary is all of it
        conversation = [{"role": "user", "content": s["prompt"]},
                        {"role": "assistant", "content": s["completion"].strip()}]
        ids = tokenizer.encode(hf_tokenizer.apply_chat_template(conversation, tokenize=False))
        with torch.no_grad():
            expected = rm(torch.tensor([ids])).logits[0, 0].item()
        assert s["rewards"]["rm"] == pytest.approx(expected, abs=1e-5)
