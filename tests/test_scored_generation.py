"""What generate_and_score gives the rewards (GRPO rollouts and evaluation alike): a chat model's completion without the <|im_end|> that ended it, so the R1
format reward can pay a well-formed answer (it used to see the EOS after </answer> and score every completion 0)."""
import pytest

from r1_megatron.data.prompt_dataset import PromptSample
from r1_megatron.rewards.registry import get_reward
from r1_megatron.rollout import Completion, FinishReason
from r1_megatron.scored_generation import reward_inputs
from r1_megatron.tokenizer import load_tokenizer
from tests.models.hf_fixtures import chat_tokenizer

ANSWER = "<think> 3 plus 4 is 7 </think> <answer> \\boxed{7} </answer>"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    chat_tokenizer().save_pretrained(path)
    return load_tokenizer(path)


def test_a_stopped_chat_completion_is_scored_without_its_eos(tokenizer):
    ids = tokenizer.encode(ANSWER)
    prompt = PromptSample("What is 3 + 4?", "7", None, "prompt", (1, 2), "data.jsonl:1")
    completions = [Completion(0, ids + [tokenizer.eos_token_id], [0.0] * (len(ids) + 1), FinishReason.STOP),
                   Completion(0, ids[:5], [0.0] * 5, FinishReason.LENGTH)]
    texts, samples = reward_inputs(tokenizer, completions, [prompt.reward_sample()])
    assert texts == [ANSWER, tokenizer.decode(ids[:5])]  # a cut-off completion keeps every token it has
    reference = {"answer": "7", "tests": None, "question": "What is 3 + 4?", "kind": "default"}
    assert samples == [{**reference, "finish_reason": "stop"}, {**reference, "finish_reason": "length"}]
    fmt, accuracy = get_reward("format"), get_reward("math_accuracy")
    assert fmt(texts[0], samples[0]) == 1.0 and accuracy(texts[0], samples[0]) == 1.0
    assert fmt(tokenizer.decode(completions[0].token_ids), samples[0]) == 0.0  # what the trainer used to score
