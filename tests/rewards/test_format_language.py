"""format_reward and language_consistency on hand-worked cases."""
import pytest

from r1_megatron.rewards import format_reward, language_consistency
from r1_megatron.rewards.language_reward import word_scripts


@pytest.mark.parametrize("completion,expected", [
    ("<think>reason</think><answer>4</answer>", 1.0),
    ("  <think>\nreason\n</think>\n\n<answer> 4 </answer>\n", 1.0),
    ("<think></think><answer></answer>", 1.0),
    ("<answer>4</answer><think>reason</think>", 0.0),  # wrong order
    ("<think>reason</think>", 0.0),  # no answer block
    ("<answer>4</answer>", 0.0),  # no think block
    ("<think>a</think><think>b</think><answer>4</answer>", 0.0),  # two think blocks
    ("<think>a</think><answer>4</answer><answer>5</answer>", 0.0),  # two answer blocks
    ("<think>a <think> b</think><answer>4</answer>", 0.0),  # nested tag
    ("Sure! <think>a</think><answer>4</answer>", 0.0),  # text before
    ("<think>a</think> so <answer>4</answer>", 0.0),  # text between
    ("<think>a</think><answer>4</answer> done", 0.0),  # text after
    ("<think>a</think><answer>4", 0.0),  # unclosed
    ("", 0.0),
])
def test_format_reward(completion, expected):
    assert format_reward(completion) == expected


def test_format_reward_with_think_in_prompt():
    assert format_reward("reason</think> <answer>4</answer>", think_in_prompt=True) == 1.0
    assert format_reward("<think>reason</think> <answer>4</answer>", think_in_prompt=True) == 0.0
    assert format_reward("reason</think> <answer>4</answer>") == 0.0


def test_format_reward_adversarial():
    assert format_reward(None) == 0.0
    assert format_reward("<think>" + "x" * 1_000_000 + "</think><answer>\ud800</answer>") == 1.0


def test_segmentation_rule():
    assert word_scripts("Hello, 世界! café x2 Привет ひらがな 한국") == [
        "latin", "han", "han", "latin", "latin", "cyrillic", "kana", "kana", "kana", "kana", "hangul", "hangul"]
    assert word_scripts("123 + 4 = ?") == []


@pytest.mark.parametrize("text,lang,expected", [
    ("<think>all english words here</think><answer>5</answer>", "en", 1.0),
    ("<think>so 我们 need</think>", "en", 2 / 4),  # so, need + 2 Han characters = 4 words
    ("<think>so 我们 need</think>", "zh", 2 / 4),
    ("<think>这是 test</think>", "zh", 2 / 3),
    ("<think>日本語です</think>", "ja", 1.0),
    ("<think>Привет world</think>", "ru", 1 / 2),
    ("no think block: every word counts, 中", "en", 6 / 7),
    ("<think>unclosed block 世", "en", 2 / 3),
    ("<think>12 + 30 = 42</think>", "en", 0.0),  # no words
    ("", "en", 0.0),
])
def test_language_consistency(text, lang, expected):
    assert language_consistency(text, lang) == pytest.approx(expected)


def test_language_consistency_rejects_unknown_language():
    with pytest.raises(ValueError, match="xx"):
        language_consistency("hi", "xx")
