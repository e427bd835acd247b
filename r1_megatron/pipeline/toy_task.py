"""The toy pipeline's task and assets (`toy_data` stage of r1_megatron/pipeline/recipes/toy_pipeline.yaml).

The task: the sum of three single digits, with a short step-by-step chain of thought. A readable, correct
response to the prompt ``4+7+2`` (rendered with the chat template, whose generation prompt ends inside the think
block) is ``4+7 is 11, 11+2 is 13.\\n</think>\\n\\n13``: each step is a fact a tiny model can learn, and every
held-out question is made of steps the training questions also contain, so a student can answer questions it
never saw. The words ("is") are there so that language consistency has something to measure: a chain of pure
digits has no words at all, and ``language_consistency`` scores a wordless text 0.

``build_toy_assets(out_dir, cfg)`` writes, deterministically and without transformers:

- ``tokenizer``: a character tokenizer (every printable ASCII character, newline, a few CJK characters so that a
  mixed-language chain of thought can occur and be filtered, ``<think>``/``</think>`` as single tokens) with a
  ChatML chat template whose generation prompt ends with ``<think>\\n`` (R1's responses start inside the block);
  an assistant message without a think block gets an empty one, so prompts and trained turns stay prefixes of
  each other.
- ``pretrain``: SFT chats that turn the random ``demo-moe`` into the toy "base model". Like a real base model it
  has seen reasoning-shaped text of mixed quality: readable and correct, wrong sums, mixed Chinese/English
  reasoning, overlong paragraphs, code-fenced reasoning (``PRETRAIN_MIX``), so R1-Zero, the readability filters
  and the language-consistency reward all have something to do.
- ``reasoning_prompts`` (question/answer, kind ``reasoning``), ``general_prompts`` (kind ``general``: no
  verifiable answer, scored by the toy reward model), ``mixed_prompts`` (both, for all-scenario RL),
  ``non_reasoning`` (SFT chats without a chain of thought), ``held_out`` (questions no other file contains) and
  ``benchmarks`` (a benchmarks YAML over it: scorer ``exact``, format ``think_format``).
- ``reward_model``: the toy preference reward model, a ``Qwen2ForSequenceClassification`` directory whose weights
  are written analytically (``toy_reward_model_tensors``): its score is an increasing function of the share of the
  input's tokens that are lowercase letters or spaces (``toy_reward_score``), so it prefers plain English words
  over digits, punctuation, CJK and markup.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import string
from typing import Callable

import numpy as np

from r1_megatron.atomic_file import write_text_atomically
from r1_megatron.data.char_tokenizer import write_char_tokenizer

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # pad, turn start, end of turn (= EOS)
THINK_TOKENS = ("<think>", "</think>")  # single tokens that decode as text (not special)
CJK = tuple("加等于所以答案是")  # "plus", "equals", "so", "answer", "is": enough for a mixed-language chain
CHARS = tuple(string.digits + string.ascii_letters + string.punctuation + " \n") + CJK
VOCAB = SPECIALS + THINK_TOKENS + CHARS + ("<unk>",)
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' and not message['content'].startswith('<think>') %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{{- message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}")

# The base model's pretraining mix: kind -> share (docs/toy_pipeline.md). Only "wrong" has wrong answers, so the
# SFT'd base answers a third of the held-out questions (GRPO needs mixed groups) with room to improve; the flawed
# kinds give the readability filters and the language reward their cases (at 45% readable, 10-15% each flawed
# kind, the base's samples at T 0.6 had almost none: 5 code blocks, 3 long paragraphs, no Chinese in 400).
PRETRAIN_MIX = {"readable": 0.3, "wrong": 0.15, "mixed_language": 0.25, "long_paragraph": 0.15, "code_block": 0.15}
WORDS = ("cat", "dog", "sun", "tree", "bird", "fish", "moon", "star", "rain", "wind", "leaf", "rock")
ADJECTIVES = ("small", "warm", "quiet", "bright", "old", "green", "soft", "fast")
PREFERRED = frozenset(string.ascii_lowercase + " ")  # the toy reward model's preferred characters


@dataclasses.dataclass(frozen=True)
class ToyDataConfig:
    """Sizes of the toy assets; every file is a pure function of these fields. held_out questions are drawn first
    and excluded from every other file; reasoning_prompts/pretrain questions are drawn from the remaining ones
    (with repeats when asked for more than exist)."""

    seed: int = 0
    held_out: int = 100
    pretrain: int = 2000
    reasoning_prompts: int = 600
    general_prompts: int = 64
    non_reasoning: int = 64

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or (value < 1 and field.name != "seed"):
                raise ValueError(f"toy_data.{field.name} must be a positive integer, got {value!r}")
        if self.held_out > len(ALL_QUESTIONS) // 2:
            raise ValueError(f"toy_data.held_out must be at most {len(ALL_QUESTIONS) // 2} (half of the "
                             f"{len(ALL_QUESTIONS)} questions), got {self.held_out!r}")


ALL_QUESTIONS = tuple((a, b, c) for a in range(10) for b in range(10) for c in range(10))


def question_text(digits: tuple[int, int, int]) -> str:
    return "+".join(map(str, digits))


def readable_reasoning(digits: tuple[int, int, int]) -> str:
    """``4+7 is 11, 11+2 is 13.``: one step per addition, left to right."""
    a, b, c = digits
    return f"{a}+{b} is {a + b}, {a + b}+{c} is {a + b + c}."


def split_questions(cfg: ToyDataConfig) -> tuple[list[tuple], list[tuple]]:
    """(held-out questions, training questions): a seeded permutation of all 1,000, disjoint by construction."""
    order = list(ALL_QUESTIONS)
    random.Random(f"toy-split:{cfg.seed}").shuffle(order)
    return order[:cfg.held_out], order[cfg.held_out:]


def _wrong(digits, rng):
    a, b, c = digits
    first = a + b + rng.choice((-1, 1))  # a slip in the first step, carried through: a consistent wrong chain
    return f"{a}+{b} is {first}, {first}+{c} is {first + c}.", str(first + c)


def _mixed_language(digits, rng):
    a, b, c = digits
    s, t = a + b, a + b + c
    steps = (f"{a}加{b}是{s}, {s}加{c}是{t}.", f"{a}+{b} 是 {s}, {s}+{c} is {t}.", f"{a}+{b} is {s}, 所以 {s}+{c} 是 {t}.")
    return rng.choice(steps), str(t)


def _long_paragraph(digits, rng):
    a, b, c = digits
    s, t = a + b, a + b + c
    return f"{a}+{b} is {s}, {s}+{c} is {t}, so the sum is {t}, check: {a}+{b} is {s} and {s}+{c} is {t}.", str(t)


def _code_block(digits, rng):
    a, b, c = digits
    # words in it (python, s, t): the language filter passes it and the code-block filter is the one to reject it
    return f"```python\ns = {a}+{b}  # {a + b}\nt = s+{c}  # {a + b + c}\n```", str(a + b + c)


PRETRAIN_KINDS: dict[str, Callable] = {
    "readable": lambda digits, rng: (readable_reasoning(digits), str(sum(digits))),
    "wrong": _wrong, "mixed_language": _mixed_language, "long_paragraph": _long_paragraph,
    "code_block": _code_block}


def _chat(question: str, reasoning: str | None, answer: str) -> dict:
    assistant = {"role": "assistant", "content": answer}
    if reasoning is not None:
        assistant["reasoning_content"] = reasoning
    return {"messages": [{"role": "user", "content": question}, assistant]}


def pretrain_records(train: list[tuple], cfg: ToyDataConfig) -> list[dict]:
    """cfg.pretrain chats over the training questions, kinds drawn by PRETRAIN_MIX; each record names its kind."""
    rng = random.Random(f"toy-pretrain:{cfg.seed}")
    kinds, shares = zip(*PRETRAIN_MIX.items())
    records = []
    for _ in range(cfg.pretrain):
        digits, kind = rng.choice(train), rng.choices(kinds, shares)[0]
        reasoning, answer = PRETRAIN_KINDS[kind](digits, rng)
        records.append(_chat(question_text(digits), reasoning, answer) | {"kind": kind})
    return records


def general_exchange(rng: random.Random) -> tuple[str, str]:
    """(a general, non-verifiable prompt, a plain-words answer to it)."""
    word, adjective = rng.choice(WORDS), rng.choice(ADJECTIVES)
    return rng.choice((
        (f"Describe a {word}.", f"a {word} is {adjective} and nice to see"),
        (f"Tell me about the {word}.", f"the {word} is {adjective} today"),
        (f"Say hello to the {word}.", f"hello {word}"),
        ("Who are you?", "i am a toy model that adds digits"),
    ))


def general_prompts(cfg: ToyDataConfig) -> list[dict]:
    rng = random.Random(f"toy-general:{cfg.seed}")
    return [{"question": q, "answer": a, "kind": "general"} for q, a in
            (general_exchange(rng) for _ in range(cfg.general_prompts))]


def non_reasoning_records(cfg: ToyDataConfig) -> list[dict]:
    """SFT chats without a chain of thought (R1's non-reasoning data: writing, self-cognition)."""
    rng = random.Random(f"toy-non-reasoning:{cfg.seed}")
    return [_chat(q, None, a) | {"kind": "general"} for q, a in
            (general_exchange(rng) for _ in range(cfg.non_reasoning))]


def reasoning_prompts(train: list[tuple], cfg: ToyDataConfig) -> list[dict]:
    rng = random.Random(f"toy-prompts:{cfg.seed}")
    picked = rng.sample(train, cfg.reasoning_prompts) if cfg.reasoning_prompts <= len(train) \
        else [rng.choice(train) for _ in range(cfg.reasoning_prompts)]
    return [{"question": question_text(d), "answer": str(sum(d)), "kind": "reasoning"} for d in picked]


def held_out_records(held_out: list[tuple]) -> list[dict]:
    return [{"id": f"toy-{i}", "question": question_text(d), "answer": str(sum(d))} for i, d in enumerate(held_out)]


def benchmarks_yaml(data_file: str) -> str:
    return ("# The toy pipeline's held-out benchmark (r1_megatron/pipeline/toy_task.py): questions no training file "
            "holds.\nbenchmarks:\n  toy_held_out:\n"
            f"    path: {data_file}\n    scorer: exact\n    fields: {{question: question, answer: answer, id: id}}\n"
            "    format: think_format\n    k: 4\n    cons_k: 4\n")


def build_toy_tokenizer(directory: str | os.PathLike) -> str:
    """Write the character tokenizer (ids in VOCAB order: 0 pad, 1 <|im_start|>, 2 <|im_end|> = EOS, 3 <think>,
    4 </think>, then one per character, <unk> last) to ``directory``; loadable by r1_megatron.tokenizer and by
    transformers' PreTrainedTokenizerFast."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "unk_token": "<unk>", "model_max_length": 512, "clean_up_tokenization_spaces": False,
              "chat_template": CHAT_TEMPLATE}
    return write_char_tokenizer(directory, VOCAB, specials=SPECIALS, config=config, text_tokens=THINK_TOKENS)


# The toy reward model: one Qwen2 layer of width RM_HIDDEN whose attention averages the input (q = k = 0: every
# causal position gets the same weight) and whose MLP adds nothing (down_proj = 0). Token t embeds as the unit
# vector e0 (not preferred) or e1 (preferred); the attention writes the mean of them into dims 2, 3, so at the
# last token those hold sqrt(H)·(1 - p, p), p the share of preferred tokens; score.weight reads p - (1 - p).
RM_HIDDEN = 8
RM_SCALE = 3.0 / 8.0  # the score is ±1 at p = 1 / p = 0 (see toy_reward_score)


def toy_reward_score(p: float, eps: float = 1e-6) -> float:
    """The toy RM's score for an input whose share of preferred tokens (lowercase letters and space) is ``p``,
    the last token included. With h = e_last + a·(0, 0, 1 - p, p) at the last token, a = 1/sqrt(1/H + eps) the
    input norm's scale: score = RM_SCALE·a·(2p - 1) / sqrt((1 + a²((1 - p)² + p²))/H + eps). Increasing in p:
    -1 at p = 0, 0 at p = 1/2, +1 at p = 1 (eps aside)."""
    a = 1.0 / math.sqrt(1.0 / RM_HIDDEN + eps)
    rms = math.sqrt((1.0 + a * a * ((1.0 - p) ** 2 + p * p)) / RM_HIDDEN + eps)
    return RM_SCALE * a * (2.0 * p - 1.0) / rms


def toy_reward_model_tensors() -> dict[str, np.ndarray]:
    """The RM's weights by their transformers names (float32); see the comment above RM_HIDDEN."""
    H, V = RM_HIDDEN, len(VOCAB)
    embed_VH = np.zeros((V, H), np.float32)
    for i, token in enumerate(VOCAB):
        embed_VH[i, 1 if token in PREFERRED else 0] = 1.0
    v_HH, o_HH, score_1H = (np.zeros((H, H), np.float32), np.zeros((H, H), np.float32),
                            np.zeros((1, H), np.float32))
    v_HH[0, 0] = v_HH[1, 1] = 1.0  # value = the normalised embedding's dims 0, 1
    o_HH[2, 0] = o_HH[3, 1] = 1.0  # written into dims 2, 3 (the residual keeps the last token's own embedding)
    score_1H[0, 2], score_1H[0, 3] = -RM_SCALE, RM_SCALE
    layer = "model.layers.0."
    zeros = {f"{layer}self_attn.{n}_proj.{k}": np.zeros((H, H) if k == "weight" else (H,), np.float32)
             for n in ("q", "k") for k in ("weight", "bias")}
    return {"model.embed_tokens.weight": embed_VH, **zeros,
            f"{layer}self_attn.v_proj.weight": v_HH, f"{layer}self_attn.v_proj.bias": np.zeros(H, np.float32),
            f"{layer}self_attn.o_proj.weight": o_HH,
            f"{layer}input_layernorm.weight": np.ones(H, np.float32),
            f"{layer}post_attention_layernorm.weight": np.ones(H, np.float32),
            **{f"{layer}mlp.{n}_proj.weight": np.zeros((H, H), np.float32) for n in ("gate", "up", "down")},
            "model.norm.weight": np.ones(H, np.float32), "score.weight": score_1H}


def toy_reward_model_config() -> dict:
    """config.json of the toy RM (transformers' Qwen2Config fields)."""
    return {"architectures": ["Qwen2ForSequenceClassification"], "model_type": "qwen2", "vocab_size": len(VOCAB),
            "hidden_size": RM_HIDDEN, "intermediate_size": RM_HIDDEN, "num_hidden_layers": 1,
            "num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": RM_HIDDEN, "hidden_act": "silu",
            "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "rope_scaling": None,
            "tie_word_embeddings": False, "use_sliding_window": False, "attention_dropout": 0.0,
            "num_labels": 1, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0},
            "pad_token_id": 0, "eos_token_id": 2, "torch_dtype": "float32"}


def build_toy_reward_model(directory: str | os.PathLike) -> str:
    from safetensors.numpy import save_file

    directory = os.fspath(directory)
    build_toy_tokenizer(directory)
    write_text_atomically(os.path.join(directory, "config.json"), json.dumps(toy_reward_model_config(), indent=2))
    tmp = os.path.join(directory, f".model.safetensors.{os.getpid()}")
    save_file(toy_reward_model_tensors(), tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(directory, "model.safetensors"))
    return directory


def _write_jsonl(path: str, records: list[dict]) -> str:
    write_text_atomically(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def build_toy_assets(out_dir: str | os.PathLike, cfg: ToyDataConfig = ToyDataConfig()) -> dict[str, str]:
    """Write every toy asset under ``out_dir`` (module docstring); returns output name -> path. A pure function
    of ``cfg``: the same config writes byte-identical files."""
    out = os.fspath(out_dir)
    os.makedirs(out, exist_ok=True)
    held_out, train = split_questions(cfg)
    reasoning, general = reasoning_prompts(train, cfg), general_prompts(cfg)
    path = lambda name: os.path.join(out, name)  # noqa: E731
    outputs = {
        "tokenizer": build_toy_tokenizer(path("tokenizer")),
        "pretrain": _write_jsonl(path("pretrain.jsonl"), pretrain_records(train, cfg)),
        "reasoning_prompts": _write_jsonl(path("reasoning_prompts.jsonl"), reasoning),
        "general_prompts": _write_jsonl(path("general_prompts.jsonl"), general),
        "mixed_prompts": _write_jsonl(path("mixed_prompts.jsonl"), reasoning + general),
        "non_reasoning": _write_jsonl(path("non_reasoning.jsonl"), non_reasoning_records(cfg)),
        "held_out": _write_jsonl(path("held_out.jsonl"), held_out_records(held_out)),
        "reward_model": build_toy_reward_model(path("reward_model")),
    }
    write_text_atomically(path("benchmarks.yaml"), benchmarks_yaml("held_out.jsonl"))
    outputs["benchmarks"] = path("benchmarks.yaml")
    return outputs
