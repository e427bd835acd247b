"""One small tokenizer interface over local files: a Hugging Face ``tokenizer.json`` (via ``tokenizers``) or a
SentencePiece ``.model``, with special tokens and the chat template from ``tokenizer_config.json``.

Nothing is fetched from a hub: ``load_tokenizer`` reads a local directory or file only.
"""
from __future__ import annotations

import abc
import functools
import json
import os
from datetime import datetime
from typing import Any, Mapping, Sequence

_SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")


class Tokenizer(abc.ABC):
    """Text <-> token ids, the ids of the special tokens, and chat-template rendering.

    ``pad_token_id`` falls back to ``eos_token_id`` when the files define no pad token (padding positions are
    masked out, so any id works; eos is the usual choice). ``bos_token_id`` is None when there is no BOS.
    """

    def __init__(self, specials: Mapping[str, str | None], chat_template: str | None, source: str):
        self.special_tokens = dict(specials)
        self.chat_template = chat_template
        self.source = source

    @abc.abstractmethod
    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]: ...

    @abc.abstractmethod
    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str: ...

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @abc.abstractmethod
    def token_to_id(self, token: str) -> int | None: ...

    def _special_id(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        return None if token is None else self.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int:
        eos = self._special_id("eos_token")
        if eos is None:
            raise ValueError(f"{self.source}: no eos_token defined (set it in tokenizer_config.json)")
        return eos

    @property
    def pad_token_id(self) -> int:
        pad = self._special_id("pad_token")
        return self.eos_token_id if pad is None else pad

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                            **extra: Any) -> str:
        """Render ``messages`` with the jinja2 chat template the way transformers does (sandboxed environment,
        trim_blocks and lstrip_blocks, ``raise_exception``/``strftime_now`` helpers, special tokens as
        variables)."""
        if self.chat_template is None:
            raise ValueError(f"{self.source}: no chat_template (tokenizer_config.json or chat_template.jinja)")
        variables = {name: token for name, token in self.special_tokens.items() if token is not None}
        variables.update(extra)
        return _compiled_template(self.chat_template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **variables)


class HFTokenizer(Tokenizer):
    """A ``tokenizer.json`` loaded with the ``tokenizers`` library."""

    def __init__(self, backend, specials, chat_template, source):
        super().__init__(specials, chat_template, source)
        self._backend = backend

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece ``.model``; special tokens default to the model's own bos/eos/pad/unk pieces."""

    def __init__(self, processor, specials, chat_template, source):
        own = {"bos_token": processor.bos_id(), "eos_token": processor.eos_id(), "pad_token": processor.pad_id(),
               "unk_token": processor.unk_id()}
        merged = {name: processor.id_to_piece(i) for name, i in own.items() if i >= 0}
        merged.update({k: v for k, v in specials.items() if v is not None})
        super().__init__(merged, chat_template, source)
        self._sp = processor

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        ids = self._sp.encode(text, out_type=int)
        return ([self.bos_token_id] + ids) if add_special_tokens and self.bos_token_id is not None else ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """As transformers does: special tokens decode to their own text (SentencePiece alone would print unk as
        " ⁇ "), the runs between them through SentencePiece, and a run's word-initial "▁" stays a space
        unless it starts the output."""
        specials = {self._special_id(name) for name in _SPECIAL_NAMES} - {None}
        out, run = "", []
        for i in map(int, ids):
            if i not in specials:
                run.append(i)
                continue
            out += self._decode_run(run, at_start=not out)
            run = []
            if not skip_special_tokens:
                out += self._sp.id_to_piece(i)
        return out + self._decode_run(run, at_start=not out)

    def _decode_run(self, run: list[int], at_start: bool) -> str:
        text = self._sp.decode(run)
        keep_space = run and not at_start and self._sp.id_to_piece(run[0]).startswith("\u2581")
        return " " + text if keep_space else text

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        return None if i == self._sp.unk_id() and token != self._sp.id_to_piece(i) else i


@functools.lru_cache(maxsize=16)
def _compiled_template(source: str):
    """The chat template compiled once per source (SFT renders every conversation several times)."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json stores it: a string, or an AddedToken dict with "content"."""
    return value.get("content") if isinstance(value, dict) else value


def _read_config(directory: str) -> tuple[dict[str, str | None], str | None]:
    """Special tokens and chat template from ``tokenizer_config.json`` (and ``chat_template.jinja``)."""
    path = os.path.join(directory, "tokenizer_config.json")
    config = _read_json(path) if os.path.exists(path) else {}
    specials = {name: _token_text(config.get(name)) for name in _SPECIAL_NAMES}
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    jinja_path = os.path.join(directory, "chat_template.jinja")
    if template is None and os.path.exists(jinja_path):
        with open(jinja_path, encoding="utf-8") as f:
            template = f.read()
    return specials, template


def _load_hf(path: str, directory: str) -> HFTokenizer:
    from tokenizers import Tokenizer as Backend

    _read_json(path)  # a clear error for malformed JSON before the library's own
    try:
        backend = Backend.from_file(path)
    except Exception as e:  # the library raises a bare Exception on a bad schema
        raise ValueError(f"{path}: not a valid tokenizers file: {e}") from None
    specials, template = _read_config(directory)
    return HFTokenizer(backend, specials, template, source=path)


def _load_sentencepiece(path: str, directory: str | None) -> SentencePieceTokenizer:
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.Load(path)
    except (OSError, RuntimeError) as e:
        raise ValueError(f"{path}: not a valid SentencePiece model: {e}") from None
    specials, template = _read_config(directory) if directory else ({}, None)
    return SentencePieceTokenizer(processor, specials, template, source=path)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a local tokenizer: a directory with ``tokenizer.json`` (preferred) or ``tokenizer.model``, plus an
    optional ``tokenizer_config.json``; or a SentencePiece ``.model`` file. Missing or malformed files raise
    FileNotFoundError / ValueError naming the file."""
    path = os.fspath(path)
    if os.path.isfile(path):
        if path.endswith(".json"):
            return _load_hf(path, os.path.dirname(path))
        return _load_sentencepiece(path, None)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer path {path!r} does not exist (a local directory or .model file; "
                                "nothing is downloaded)")
    for name, loader in (("tokenizer.json", _load_hf), ("tokenizer.model", _load_sentencepiece)):
        candidate = os.path.join(path, name)
        if os.path.exists(candidate):
            return loader(candidate, path)
    raise FileNotFoundError(f"{path}: no tokenizer.json or tokenizer.model in this directory")
