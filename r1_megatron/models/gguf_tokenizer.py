"""The tokenizer of an HF directory as llama.cpp reads it from GGUF metadata (`tokenizer.ggml.*`).

Supported: byte-level BPE tokenizer.json files (GPT-2, Qwen2, Llama-3 and the R1 distills use them), which llama.cpp
calls the "gpt2" tokenizer model. llama.cpp does not run the tokenizer.json pre-tokenizer: it picks a built-in
regex by the `tokenizer.ggml.pre` name, so the name is chosen from the pre-tokenizer's own regex (a table of the
regexes llama.cpp implements); any other pre-tokenizer is refused rather than exported to tokenize differently.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf

from r1_megatron.tokenizer import load_tokenizer

# tokenizer.json Split regexes -> the llama.cpp pre-tokenizer that implements the same split (llama-vocab.cpp)
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
LLAMA3_REGEX = QWEN2_REGEX.replace(r"\p{N}|", r"\p{N}{1,3}|")
# DeepSeek-V3 / R1: three Splits (digit runs, CJK runs, then words / punctuation / whitespace)
DEEPSEEK_V3_REGEXES = (r"\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
                       "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
                       "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+")
PRE_TOKENIZERS = {(QWEN2_REGEX,): "qwen2", (LLAMA3_REGEX,): "llama-bpe", DEEPSEEK_V3_REGEXES: "deepseek-v3"}
GPT2_PRE = "gpt-2"  # a bare ByteLevel pre-tokenizer with its built-in GPT-2 regex
SPECIAL_NAMES = ("bos", "eos", "pad", "unk")


@dataclass(frozen=True)
class GGUFVocab:
    """Everything llama.cpp needs to tokenize, detokenize and stop like the source tokenizer."""

    pre: str                      # tokenizer.ggml.pre
    tokens: list[str]             # id -> token text (byte-level alphabet for BPE tokens, raw for added tokens)
    token_types: list[int]        # gguf.TokenType per id
    merges: list[str]             # "left right", in rank order
    special_ids: dict[str, int]   # bos/eos/pad/unk ids the source defines
    add_bos: bool                 # the source tokenizer prepends bos when it adds special tokens
    add_eos: bool
    chat_template: str | None


def _fail(file: Path, field: str, why: str) -> ValueError:
    return ValueError(f"GGUF export: {file} {field}: {why}")


def _pre_name(raw: dict, file: Path) -> str:
    """llama.cpp's pre-tokenizer name for tokenizer.json's `pre_tokenizer` (see module docstring)."""
    pre = raw.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
        return GPT2_PRE
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    splits, last = steps[:-1], steps[-1] if steps else {}
    if (last.get("type") == "ByteLevel" and not last.get("use_regex", True)
            and all(step.get("type") == "Split" and step.get("behavior") == "Isolated"
                    and not step.get("invert", False) for step in splits)):
        name = PRE_TOKENIZERS.get(tuple(step.get("pattern", {}).get("Regex") for step in splits))
        if name is not None:
            return name
    raise _fail(file, "pre_tokenizer", "not one llama.cpp implements (supported: ByteLevel with the GPT-2 regex, "
                                       "or the Splits of Qwen2, Llama-3 or DeepSeek-V3 followed by ByteLevel)")


def _check_model(raw: dict, file: Path) -> None:
    model = raw.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise _fail(file, "model", f"type {model.get('type')!r} is not supported (supported: byte-level BPE, "
                                   "as Qwen2 and Llama-3 use; SentencePiece tokenizers are not exported yet)")
    if (raw.get("decoder") or {}).get("type") != "ByteLevel":
        raise _fail(file, "decoder", "must be ByteLevel (a byte-level BPE)")
    normalizer = raw.get("normalizer") or {}
    empty = normalizer.get("type") == "Sequence" and not normalizer.get("normalizers")  # DeepSeek-V3's
    if normalizer.get("type") not in (None, "NFC") and not empty:  # Qwen2's NFC is what llama.cpp skips too
        raise _fail(file, "normalizer", f"{normalizer.get('type')!r} is not supported (supported: none, NFC)")


def _merges(raw: dict, file: Path) -> list[str]:
    """Merges as llama.cpp stores them, "left right"; tokenizers >= 0.20 writes [left, right] pairs."""
    merges = []
    for merge in raw["model"].get("merges", []):
        if isinstance(merge, list):
            if any(" " in part for part in merge):  # byte-level tokens spell a space as "Ġ", never " "
                raise _fail(file, "model.merges", f"merge {merge} contains a space")
            merge = " ".join(merge)
        merges.append(merge)
    return merges


def _tokens(backend, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token text and type per id; ids the tokenizer leaves unused up to the model's vocab_size (padding rows
    of the embedding) become "[PAD<id>]" UNUSED, as llama.cpp's converter names them."""
    by_id = {i: token for token, i in backend.get_vocab(with_added_tokens=True).items()}
    if max(by_id) >= vocab_size:
        raise ValueError(f"GGUF export: the tokenizer has token id {max(by_id)} >= the model's vocab_size "
                         f"{vocab_size}")
    added = backend.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:  # llama.cpp matches USER_DEFINED tokens in any text, CONTROL ones with parse_special
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _special_ids(directory: Path, tokenizer) -> dict[str, int]:
    """bos/eos/pad/unk: the tokenizer's (tokenizer_config.json), else config.json's ids."""
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    ids = {}
    for name in SPECIAL_NAMES:
        text = tokenizer.special_tokens.get(f"{name}_token")
        token_id = tokenizer.token_to_id(text) if text is not None else None
        token_id = token_id if token_id is not None else config.get(f"{name}_token_id")
        if isinstance(token_id, int):
            ids[name] = token_id
    return ids


def read_vocab(directory: str | Path, vocab_size: int) -> GGUFVocab:
    """The GGUF tokenizer metadata of the tokenizer in `directory` (tokenizer.json + tokenizer_config.json /
    chat_template.jinja), for a model with `vocab_size` embedding rows; ValueError on what llama.cpp would
    tokenize differently."""
    from tokenizers import Tokenizer as Backend

    directory = Path(directory)
    file = directory / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"GGUF export: {file} does not exist (GGUF export needs a tokenizer.json; pass "
                                "--tokenizer DIR)")
    raw = json.loads(file.read_text())
    _check_model(raw, file)
    pre = _pre_name(raw, file)
    backend = Backend.from_file(str(file))
    tokenizer = load_tokenizer(directory)
    tokens, types = _tokens(backend, vocab_size)
    special = _special_ids(directory, tokenizer)
    probe = backend.encode("a", add_special_tokens=True).ids  # what the source adds around any text
    return GGUFVocab(pre=pre, tokens=tokens, token_types=types, merges=_merges(raw, file), special_ids=special,
                     add_bos="bos" in special and probe[0] == special["bos"],
                     add_eos="eos" in special and probe[-1] == special["eos"],
                     chat_template=tokenizer.chat_template)


def add_vocab(writer: gguf.GGUFWriter, vocab: GGUFVocab) -> None:
    """Write `vocab` as tokenizer.ggml.* metadata."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    for name, token_id in vocab.special_ids.items():
        getattr(writer, {"pad": "add_pad_token_id"}.get(name, f"add_{name}_token_id"))(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)
