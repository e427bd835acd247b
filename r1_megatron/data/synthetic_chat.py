"""Built-in synthetic conversations for the CPU SFT demo (`r1-megatron train sft` with no arguments) and tests:
short R1-style chats (the assistant reasons in `reasoning_content`, then answers), some with two turns, and a
character-level tokenizer with a ChatML chat template made for them."""
from __future__ import annotations

import os
import random
import string

from r1_megatron.data.char_tokenizer import write_char_tokenizer

CHAT_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # pad, turn start, end of turn (= EOS)
CHAT_CHARS = tuple(string.digits + string.ascii_letters + string.punctuation + " \n")
# ChatML, as Qwen2's template renders it (reasoning goes into the content as <think>...</think> upstream)
CHAT_TEMPLATE = ("{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                 "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
                 "{%- endif %}")
WORDS = ("cat", "dog", "sun", "tree", "bird", "fish", "moon", "star", "rain", "wind", "leaf", "rock")


def _turn(rng: random.Random) -> tuple[str, str, str]:
    """(question, reasoning, answer): an addition or a word reversal."""
    if rng.random() < 0.5:
        a, b = rng.randrange(10, 50), rng.randrange(10, 50)
        return f"What is {a}+{b}?", f"{a}+{b}={a + b}", str(a + b)
    word = rng.choice(WORDS)
    return f"Reverse '{word}'.", " ".join(reversed(word)), word[::-1]


def chat_records(n: int, seed: int) -> list[dict]:
    """`n` records {"messages": [...]}, a pure function of (n, seed); every fourth has a second exchange."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        messages = []
        for _ in range(2 if i % 4 == 3 else 1):
            question, reasoning, answer = _turn(rng)
            messages += [{"role": "user", "content": question},
                         {"role": "assistant", "reasoning_content": reasoning, "content": answer}]
        records.append({"messages": messages})
    return records


def chat_questions(n: int, seed: int) -> list[dict]:
    """`n` single-exchange records {"question", "answer"} (the answer without its reasoning) for held-out
    evaluation of the chats' task; a pure function of (n, seed)."""
    rng = random.Random(f"questions:{seed}")
    return [dict(zip(("question", "answer"), _turn(rng)[::2])) for _ in range(n)]


def build_chat_tokenizer(directory: str | os.PathLike) -> str:
    """Write a character-level tokenizer with the ChatML template to `directory` (loadable by
    r1_megatron.tokenizer.load_tokenizer and transformers' PreTrainedTokenizerFast); ids: 0 <|endoftext|> (pad),
    1 <|im_start|>, 2 <|im_end|> (eos), then one per character. Deterministic."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "unk_token": "<unk>", "model_max_length": 512, "clean_up_tokenization_spaces": False,
              "chat_template": CHAT_TEMPLATE}
    return write_char_tokenizer(directory, CHAT_SPECIALS + CHAT_CHARS + ("<unk>",), specials=CHAT_SPECIALS,
                                config=config)
