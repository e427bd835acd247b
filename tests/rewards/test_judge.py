"""The generative judge: verdicts parsed by hand-written cases, and the judge end to end on a tiny random causal LM
(its verdicts are noise; the point is the plumbing: prompt, greedy generation, parse, count)."""
import pytest

from r1_megatron.rewards.judge import GenerativeJudge, judge_prompt, parse_verdict
from r1_megatron.rewards.model_rewards import DEFAULT_JUDGE_PROMPT, ModelRewardConfig
from tests.models.hf_fixtures import qwen2_chat_dir


@pytest.mark.parametrize("text, score", [
    ("[[YES]]", 1.0),
    ("[[no]]", 0.0),
    ("The response matches. [[ Correct ]]", 1.0),
    ("First I thought [[YES]], but on reflection [[NO]]", 0.0),  # the last bracketed verdict
    ("[[0.75]]", 0.75),
    ("[[1.5]]", None),  # a score above 1 is no verdict
    ("Verdict: no", 0.0),
    ("Answer: **Yes**, they agree", 1.0),
    ("judgement = incorrect", 0.0),
    ("Yes.", 1.0),
    ("  NO  ", 0.0),
    ("<think>maybe [[NO]]</think>[[YES]]", 1.0),  # a thinking judge: only the text after </think>
    ("<think>[[YES]]</think> I cannot tell", None),
    ("yes and no", None),
    ("garbage !@#", None),
    ("", None),
    ("The answer is yesterday's", None),  # a word containing yes is not a verdict
])
def test_parse_verdict(text, score):
    assert parse_verdict(text) == score


def test_the_judge_prompt_holds_question_reference_and_response():
    class Plain:
        chat_template = None
    text = judge_prompt(DEFAULT_JUDGE_PROMPT, Plain(), "What is 2+2?", "4", "It is 4.")
    assert "Question:\nWhat is 2+2?" in text and "Reference answer:\n4" in text and "Response:\nIt is 4." in text
    assert text.endswith("[[YES]] or [[NO]] only.")


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    return qwen2_chat_dir(tmp_path_factory.mktemp("judge") / "hf")


def test_the_judge_scores_its_parsed_greedy_verdicts(judge_dir):
    from r1_megatron.parallel import initialize

    initialize()
    cfg = ModelRewardConfig(kind="judge", path=str(judge_dir), dtype="fp32", max_new_tokens=6, max_prompt_tokens=120,
                            prompt="Q: {question}\nRef: {reference}\nResp: {response}\nSame? [[YES]]/[[NO]]")
    judge = GenerativeJudge("agrees", cfg)
    texts = ["<think>3 + 4</think> The sum is 7.", "<think>hmm</think> 8", "x" * 2000]
    samples = [{"question": "What is 3 + 4?", "answer": "7"}, {"question": "What is 3 + 4?", "answer": "7"},
               {"question": "Long", "answer": "1"}]
    scores = judge.score(texts, samples)
    assert judge.verdicts[2] is None  # its prompt is longer than max_prompt_tokens: not judged
    assert all(isinstance(v, str) for v in judge.verdicts[:2])
    parsed = [parse_verdict(v) if v is not None else None for v in judge.verdicts]
    assert scores == [0.0 if p is None else p for p in parsed]
    assert judge.counts == {"unparsed": float(sum(p is None for p in parsed))} and judge.counts["unparsed"] >= 1
    assert judge.score(texts[:2], samples[:2]) == scores[:2]  # greedy: the same verdicts again
    assert judge.score([], []) == []
    # what it read: the summary after </think>, in the chat template's user turn
    prompt = judge.tokenizer.decode(judge.prompt_ids(texts[0], samples[0]))
    assert "Ref: 7\nResp: The sum is 7.\nSame?" in prompt and "<think>" not in prompt
    assert prompt.startswith("<|im_start|>user")
    judge.close()
