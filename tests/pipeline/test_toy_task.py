"""The toy pipeline's assets (r1_megatron/pipeline/toy_task.py): deterministic, the held-out questions in no
training file, a tokenizer that round-trips every character, data the SFT renderer and the benchmark loader read,
flawed pretraining kinds that the readability checks catch, and a toy reward model that loads in transformers and
scores what its docstring says."""
from __future__ import annotations

import dataclasses
import filecmp
import json
import os

import pytest

from r1_megatron.pipeline import toy_task
from r1_megatron.pipeline.toy_task import ToyDataConfig, build_toy_assets

SMALL = ToyDataConfig(pretrain=300, reasoning_prompts=200)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_toy_assets(tmp_path_factory.mktemp("toy"), SMALL)


def _jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_same_config_same_bytes_other_seed_other_data(assets, tmp_path):
    root = os.path.dirname(assets["pretrain"])
    again = build_toy_assets(tmp_path / "again", SMALL)
    assert set(again) == set(assets)
    assert _files(root) == _files(tmp_path / "again")
    _, mismatch, errors = filecmp.cmpfiles(root, tmp_path / "again", _files(root), shallow=False)
    assert mismatch == errors == []
    other = build_toy_assets(tmp_path / "other", dataclasses.replace(SMALL, seed=1))
    assert _jsonl(other["held_out"]) != _jsonl(assets["held_out"])


def test_held_out_questions_are_in_no_training_file(assets):
    held = {r["question"] for r in _jsonl(assets["held_out"])}
    assert len(held) == SMALL.held_out
    trained = {r["messages"][0]["content"] for r in _jsonl(assets["pretrain"])}
    prompted = {r["question"] for r in _jsonl(assets["reasoning_prompts"]) + _jsonl(assets["mixed_prompts"])}
    assert trained and prompted and not held & (trained | prompted)
    for record in _jsonl(assets["held_out"]):  # and the reference is the sum
        assert record["answer"] == str(sum(map(int, record["question"].split("+"))))


def test_tokenizer_round_trips_every_character(assets):
    from transformers import PreTrainedTokenizerFast

    from r1_megatron.tokenizer import load_tokenizer

    ours = load_tokenizer(assets["tokenizer"])
    theirs = PreTrainedTokenizerFast.from_pretrained(assets["tokenizer"])
    assert ours.vocab_size == len(toy_task.VOCAB) == len(theirs)
    text = "".join(toy_task.CHARS) + "<think>\n4+7 is 11.\n</think>\n\n11"
    ids = ours.encode(text)
    assert ids == theirs.encode(text, add_special_tokens=False)
    assert len(ids) == len(toy_task.CHARS) + 2 + len("\n4+7 is 11.\n") + len("\n\n11")  # one token a character
    assert ours.decode(ids) == text == theirs.decode(ids)
    unk = ours.token_to_id("<unk>")
    for name in ("pretrain", "non_reasoning", "mixed_prompts"):
        assert unk not in ours.encode(open(assets[name], encoding="utf-8").read().replace("\\n", "\n"))
    prompt = ours.apply_chat_template([{"role": "user", "content": "1+2+3"}], add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")
    assert prompt == theirs.apply_chat_template([{"role": "user", "content": "1+2+3"}], tokenize=False,
                                                add_generation_prompt=True)


def test_sft_renders_reasoning_and_non_reasoning_chats(assets):
    from r1_megatron.data.chat_render import ChatRenderer, Message, SFTTemplate
    from r1_megatron.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(assets["tokenizer"])
    renderer = ChatRenderer(tokenizer, SFTTemplate.CHAT)
    for record in (_jsonl(assets["pretrain"])[0], _jsonl(assets["non_reasoning"])[0]):
        messages = [Message(m["role"], m["content"], m.get("reasoning_content")) for m in record["messages"]]
        tokens, trained = renderer.render(messages)
        assert len(tokens) < 128  # demo-moe's max_position_embeddings
        response = tokenizer.decode([t for t, keep in zip(tokens, trained) if keep])
        assert response.endswith(record["messages"][1]["content"] + "<|im_end|>")
        assert response.count("</think>") == 1 and "<think>" not in response  # the prompt opened the block


def test_benchmark_scores_a_readable_correct_response(assets):
    from r1_megatron.evaluation.benchmark_suite import load_benchmarks, load_questions
    from r1_megatron.rewards.registry import get_reward
    from r1_megatron.tokenizer import load_tokenizer

    (spec,) = load_benchmarks(assets["benchmarks"], ["toy_held_out"])
    questions = load_questions(spec, load_tokenizer(assets["tokenizer"]))
    assert len(questions) == SMALL.held_out and questions[0].prompt.endswith("<think>\n")
    digits = tuple(map(int, questions[0].question.split("+")))
    right = f"{toy_task.readable_reasoning(digits)}\n</think>\n\n{sum(digits)}"
    for completion, score in ((right, 1.0), (right + "0", 0.0)):
        assert get_reward("exact_answer")(completion, questions[0].reference) == score
    assert get_reward("think_format")(right, questions[0].reference) == 1.0


def test_pretraining_kinds_have_the_flaws_the_filters_catch(assets):
    from r1_megatron.rewards.language_reward import language_consistency

    by_kind = {}
    for record in _jsonl(assets["pretrain"]):
        by_kind.setdefault(record["kind"], []).append(record["messages"][1])
    assert set(by_kind) == set(toy_task.PRETRAIN_MIX)

    for kind, messages in by_kind.items():
        for m in messages:
            reasoning = m["reasoning_content"]
            consistency, longest, fenced = (language_consistency(reasoning), max(map(len, reasoning.split("\n\n"))),
                                            "```" in reasoning)
            assert (consistency < 0.95) == (kind == "mixed_language"), (kind, m)
            assert (longest > 60) == (kind == "long_paragraph"), (kind, m)
            assert fenced == (kind == "code_block"), (kind, m)
    for m in by_kind["wrong"]:  # a consistent chain ending in a wrong sum
        assert m["reasoning_content"].endswith(f" is {m['content']}.")
    for record in _jsonl(assets["pretrain"]):
        total = str(sum(map(int, record["messages"][0]["content"].split("+"))))
        assert (record["messages"][1]["content"] == total) == (record["kind"] != "wrong")


def test_toy_reward_model_loads_in_transformers_and_prefers_plain_words(assets):
    import torch
    from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast

    model = AutoModelForSequenceClassification.from_pretrained(assets["reward_model"], torch_dtype=torch.float32)
    assert type(model).__name__ == "Qwen2ForSequenceClassification" and model.config.num_labels == 1
    tokenizer = PreTrainedTokenizerFast.from_pretrained(assets["reward_model"])
    answers = ["a cat is soft and warm", "hello cat", "12+3 is 15!!", "所以是 15", "<think>\n4+7 is 11.\n</think>\n\n11"]
    scores, shares = [], []
    for answer in answers:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "Describe a cat."},
                                              {"role": "assistant", "content": answer}], tokenize=False)
        ids = tokenizer.encode(text, add_special_tokens=False)
        shares.append(sum(toy_task.VOCAB[i] in toy_task.PREFERRED for i in ids) / len(ids))
        with torch.no_grad():
            scores.append(model(torch.tensor([ids])).logits.item())
    for score, p in zip(scores, shares):
        assert score == pytest.approx(toy_task.toy_reward_score(p), abs=1e-5)
    assert min(scores[:2]) > max(scores[2:])  # plain words beat digits, CJK and a reasoning chain
    ps = [i / 10 for i in range(11)]
    assert all(toy_task.toy_reward_score(a) < toy_task.toy_reward_score(b) for a, b in zip(ps, ps[1:]))
    assert toy_task.toy_reward_score(0.0) == pytest.approx(-1, abs=1e-4)
    assert toy_task.toy_reward_score(1.0) == pytest.approx(1, abs=1e-4)


@pytest.mark.parametrize("field,value", [("held_out", 0), ("held_out", 501), ("pretrain", 1.5), ("seed", True)])
def test_bad_sizes_name_the_key(field, value):
    with pytest.raises(ValueError, match=rf"^toy_data\.{field} must be"):
        ToyDataConfig(**{field: value})


def test_toy_reward_model_scores_the_same_through_load_reward_model(assets):
    from r1_megatron.models.reward_model import load_reward_model
    from r1_megatron.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(assets["reward_model"])
    texts = ["hello cat", "12+3 is 15!!", "所以是 15"]
    seqs = [tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": "Describe a cat."},
                                                           {"role": "assistant", "content": t}],
                                                          add_generation_prompt=False)) for t in texts]
    scores = load_reward_model(assets["reward_model"]).score(seqs, batch_size=2)
    for score, ids in zip(scores, seqs):
        p = sum(toy_task.VOCAB[i] in toy_task.PREFERRED for i in ids) / len(ids)
        assert score == pytest.approx(toy_task.toy_reward_score(p), abs=1e-5)
