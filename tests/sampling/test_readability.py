"""R1's readability filters and the de-dup normaliser on hand-written responses, through the Selector that applies
them in order (a sample is counted under its first failing filter; the per-sample filters are all measured)."""
import pytest

from r1_megatron.sampling.config import FiltersConfig, KeepConfig, LanguageFilter
from r1_megatron.sampling.readability import (dedup_key, has_code_block, longest_paragraph_chars, normalise_text,
                                              reasoning_consistency, split_reasoning)
from r1_megatron.sampling.selection import FILTERS, Drawn, PromptTally, Selector, total

ENGLISH = "We add the two numbers. Three plus four is seven, so the sum is seven."
MIXED = "We add the two numbers. 我们需要计算这两个数的和。 Three plus four is seven."
SENTENCE = "Adding three and four gives seven, which we check by counting up from three. "  # 78 characters


def drawn(texts, rewards=None):
    return [Drawn(j, t, dict(rewards[j] if rewards else {"math_accuracy": 1.0}), 1.0, "stop")
            for j, t in enumerate(texts)]


def select(texts, rewards=None, keep=None, **filters):
    selector = Selector(keep or KeepConfig(), FiltersConfig(**filters))
    return selector.select("What is 3 + 4?", drawn(texts, rewards))


def reasons(decisions):
    return [d.rejected_by for d in decisions]


def test_the_reasoning_part_is_the_text_before_the_first_closing_think_tag():
    assert split_reasoning("Three plus four.\n</think>\n\nThe answer is 7.") == ("Three plus four.", "The answer is 7.")
    # an R1-Zero response opens the block itself; its answer block stays in the summary
    assert split_reasoning(" <think> 3 + 4 = 7 </think> <answer> 7 </answer>") == ("3 + 4 = 7", "<answer> 7 </answer>")
    assert split_reasoning("never closed <think> x") == ("never closed <think> x", "")
    assert split_reasoning("a</think>b</think>c") == ("a", "b</think>c")


def test_mixed_chinese_and_english_reasoning_is_rejected_pure_english_kept():
    assert reasoning_consistency(ENGLISH, "en") == 1.0
    # 12 Han characters (one word each) among 10 English words
    assert reasoning_consistency(MIXED, "en") == pytest.approx(10 / 22)
    assert reasoning_consistency("3 + 4 = 7", "en") is None  # no word: nothing in another language
    assert reasons(select([f"{MIXED}</think>7", f"{ENGLISH}</think>7", "3 + 4 = 7</think>7"])) == \
        ["language", None, None]
    # the summary is not looked at, and the filter can be off
    assert reasons(select([f"{ENGLISH}</think>{MIXED}"])) == [None]
    assert reasons(select([f"{MIXED}</think>7"], language=LanguageFilter(min_consistency=None))) == [None]
    assert reasons(select([f"{MIXED}</think>7"], language=LanguageFilter(min_consistency=0.4))) == [None]


def test_a_2000_character_paragraph_is_rejected_the_same_text_in_short_paragraphs_kept():
    long = (SENTENCE * 26)[:2000]
    short = "\n\n".join(long[i:i + 500] for i in range(0, 2000, 500))
    assert longest_paragraph_chars(long) == 2000 and longest_paragraph_chars(short) == 500
    assert longest_paragraph_chars("a\n \t\nbb\n\n\nccc") == 3  # blank lines may hold whitespace
    assert reasons(select([f"{long}</think>7", f"{short}</think>7"])) == ["long_paragraph", None]
    assert reasons(select([f"{long}</think>7"], max_paragraph_chars=2000)) == [None]
    assert reasons(select([f"{long}</think>7"], max_paragraph_chars=None)) == [None]


def test_a_code_block_in_the_thinking_part_is_rejected_code_in_the_summary_kept():
    fenced = "Let me check with code.\n```python\nprint(3 + 4)\n```\nIt prints 7."
    assert has_code_block(fenced) and has_code_block("then ```x = 1``` inline")
    assert has_code_block("look:\n~~~\nx = 1\n~~~") and not has_code_block("a ~~~ b, `x` and ``y``")
    texts = [f"{fenced}</think>The answer is 7.", f"{ENGLISH}</think>Check:\n```python\nprint(3 + 4)\n```"]
    assert reasons(select(texts)) == ["code_block", None]
    assert reasons(select(texts, code_blocks="keep")) == [None, None]


def test_exact_and_normalised_de_duplication():
    variants = ["The sum is seven.</think>Seven!", "the  SUM is seven</think>seven", "The sum is seven.</think>Seven!"]
    assert normalise_text("The  SUM, is\tseven!!") == "the sum is seven"
    assert normalise_text("Hello,World") == normalise_text("hello, world") == "hello world"
    assert normalise_text("ＡＢＣ（１）") == "abc 1"  # NFKC: full-width forms are their ASCII letters
    assert dedup_key("q", "a b", "none") is None and dedup_key("Q", "A, b", "normalised") == dedup_key("q", "a b",
                                                                                                       "normalised")
    assert reasons(select(variants, dedup="exact")) == [None, None, "duplicate"]
    assert reasons(select(variants, dedup="normalised")) == [None, "duplicate", "duplicate"]
    assert reasons(select(variants, dedup="none")) == [None, None, None]
    # across prompts, and from the kept samples of an earlier run (a resume)
    selector = Selector(KeepConfig(), FiltersConfig(), kept=[("What is 3 + 4?", "The sum is seven.", "Seven!")])
    assert reasons(selector.select("what is 3+4", drawn(variants[1:2]))) == ["duplicate"]
    assert reasons(selector.select("What is 5 + 2?", drawn(variants[1:2]))) == [None]


def test_first_failing_filter_is_counted_and_every_per_sample_filter_is_measured():
    fence = "```\nx\n```"
    texts = ["wrong but fine</think>8", f"{MIXED} {fence}</think>7", f"{ENGLISH}</think>7", f"{ENGLISH}</think>7",
             f"{ENGLISH} again</think>7", f"{ENGLISH} once more</think>7", f"wrong {fence}</think>9"]
    wrong, right = {"math_accuracy": 0.0}, {"math_accuracy": 1.0}
    rewards = [wrong, right, right, right, right, right, wrong]
    decisions = select(texts, rewards, keep=KeepConfig(max_per_prompt=2))
    assert reasons(decisions) == ["rewards", "language", None, "duplicate", None, "max_per_prompt", "rewards"]
    assert decisions[1].filters["code_block"] == {"pass": False, "found": True}  # measured after the first failure
    assert "duplicate" not in decisions[1].filters  # needs the earlier filters passed
    assert decisions[0].filters["rewards"] == {"pass": False, "below_minimum": ["math_accuracy"]}
    assert [d.kept for d in decisions] == [False, False, True, False, True, False, False]
    tally = PromptTally.of(decisions)
    assert (tally.drawn, tally.kept) == (7, 2)
    assert tally.rejected == {"rewards": 2, "language": 1, "duplicate": 1, "max_per_prompt": 1}
    assert tally.failed == {"rewards": 2, "language": 1, "code_block": 2, "duplicate": 1, "max_per_prompt": 1}
    both = total([tally.to_json(), tally.to_json()])
    assert list(both["rejected"]) == list(FILTERS) and both["rejected"]["code_block"] == 0
    assert (both["prompts"], both["drawn"], both["kept"], both["failed"]["code_block"]) == (2, 14, 4, 4)
    assert both["drawn"] == both["kept"] + sum(both["rejected"].values())
