"""Built-in synthetic task for the CPU demo and tests: small-integer addition with an exact-match reward, and a
character-level tokenizer made for it."""
from __future__ import annotations

import dataclasses
import os
import random
from typing import Any, Mapping

from r1_megatron.data.char_tokenizer import write_char_tokenizer

ARITHMETIC_SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
ARITHMETIC_CHARS = tuple("0123456789") + ("+", "=")
ARITHMETIC_SPARES = tuple(f"<spare_{i}>" for i in range(4))


@dataclasses.dataclass(frozen=True)
class ArithmeticConfig:
    """``a+b=`` with a, b uniform in [0, 10**num_digits); operands zero-padded to ``num_digits`` when ``pad``."""

    num_digits: int = 2
    pad: bool = True

    def __post_init__(self):
        if not 1 <= self.num_digits <= 9:
            raise ValueError(f"ArithmeticConfig.num_digits must be in 1..9, got {self.num_digits!r}")


def arithmetic_problems(n: int, seed: int, config: ArithmeticConfig = ArithmeticConfig()) -> list[dict[str, str]]:
    """``n`` records ``{"question": "07+35=", "answer": "42"}``, a pure function of (n, seed, config)."""
    rng = random.Random(seed)
    high = 10 ** config.num_digits
    width = config.num_digits if config.pad else 0
    records = []
    for _ in range(n):
        a, b = rng.randrange(high), rng.randrange(high)
        records.append({"question": f"{a:0{width}d}+{b:0{width}d}=", "answer": str(a + b)})
    return records


def arithmetic_reward(completion: str, answer: str, *, stopped: bool = True, require_eos: bool = True) -> float:
    """1.0 iff the completion is exactly ``answer`` and, with ``require_eos``, generation ended there with ``<eos>``
    (``stopped``; a truncated completion scores 0). The completion is the decoded text without that ``<eos>``
    (``Completion.content_ids``), special tokens kept, so ``4<spare_0>2`` is not ``42``."""
    if not isinstance(completion, str) or (require_eos and not stopped):
        return 0.0
    return 1.0 if completion == str(answer) else 0.0


def arithmetic_reward_for_sample(completion: str, sample: Mapping[str, Any], **kwargs: Any) -> float:
    """Registry adapter (reward name ``arithmetic_exact``); the trainer's ``finish_reason`` says whether the
    completion stopped at ``<eos>``."""
    return arithmetic_reward(completion, sample["answer"], stopped=sample.get("finish_reason", "stop") == "stop",
                             **kwargs)


def build_arithmetic_tokenizer(directory: str | os.PathLike) -> str:
    """Write a character-level tokenizer (``tokenizer.json`` + ``tokenizer_config.json``) to ``directory``.

    Ids: 0 <pad>, 1 <bos>, 2 <eos>, 3 <unk>, 4-13 the digits, 14 '+', 15 '=', 16-19 spares (20 tokens). Every
    character is its own token (a BPE model without merges); special tokens are matched in text. Loadable by
    ``r1_megatron.tokenizer.load_tokenizer`` and by transformers' ``PreTrainedTokenizerFast``. Deterministic.
    """
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
              "pad_token": "<pad>", "unk_token": "<unk>", "model_max_length": 64, "clean_up_tokenization_spaces": False}
    return write_char_tokenizer(directory, ARITHMETIC_SPECIALS + ARITHMETIC_CHARS + ARITHMETIC_SPARES,
                                specials=ARITHMETIC_SPECIALS + ARITHMETIC_SPARES, config=config)
