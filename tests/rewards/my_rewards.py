"""Exact-match reward for multiple-choice questions whose reference answer is a letter A-E."""
from r1_megatron.rewards import register_reward
from r1_megatron.rewards.answer_extraction import extract_final_answer

CHOICES = ("A", "B", "C", "D", "E")


def check_choice(sample):
    """At start-up: a reference that is not a letter can never be matched."""
    if str(sample["answer"]).strip().upper() not in CHOICES:
        raise ValueError(f"the answer is not one of the letters {', '.join(CHOICES)}")


@register_reward("choice_exact", needs=("answer",), check=check_choice)
def choice_exact(completion, sample, *, ignore_case=True):
    """1.0 when the final answer (the last \\boxed{}, else the <answer> block), without parentheses, is the
    reference letter."""
    answer = extract_final_answer(completion)
    if answer is None:
        return 0.0
    answer, reference = answer.strip("() ."), str(sample["answer"]).strip()
    if ignore_case:
        answer, reference = answer.upper(), reference.upper()
    return 1.0 if answer == reference else 0.0
