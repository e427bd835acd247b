"""SFT datasets from local files: cold-start SFT, rejection-sampling SFT and distillation (`r1-megatron train sft`).

Records (JSONL lines or Parquet rows; ``format``):

- ``messages``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "...",
  "reasoning_content": "..." (optional, assistant)}, ...]}``, DeepSeek's API shape.
- ``prompt_response``: ``{"prompt": "...", "response": "...", "reasoning": "..." (optional)}``, plus a system
  prompt from ``system_field`` when set; the prompt becomes a user message, the response the assistant's answer.
- ``auto`` (default): per record, ``messages`` when the record has the messages field, else prompt/response.

Templates (``chat``, ``r1_distill``, ``r1_cold_start``) are described in ``chat_render.py`` and docs/sft_data.md.
Each example is ``tokens`` and ``loss_mask`` (``loss_mask[t]`` is 1 iff ``tokens[t + 1]`` is trained on).

Over-long examples (more than ``max_seq_len`` tokens): ``truncate`` keeps the first ``max_seq_len`` tokens (an
example left with nothing to train on is dropped), ``drop`` drops it; both are counted in ``notes()``.

Validation: ``validation_paths`` names separate files, or ``validation_fraction`` holds out that share of the
examples (at least one), chosen by a permutation seeded by ``seed`` alone, so it does not change with the
training order or on resume. ``next_batch`` serves the training set epoch by epoch in a seeded order;
``iter_batches`` makes one pass in file order (validation).
"""
from __future__ import annotations

import collections
import dataclasses
import enum
import hashlib
import random
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from r1_megatron.tokenizer import Tokenizer

from .epoch_order import EpochOrder
from .chat_render import COLD_START_SEPARATOR, ROLES, ChatRenderer, Message, RenderError, SFTTemplate
from .prompt_dataset import OnError
from .records import DataError, read_records, text_field, value_kind


class SFTFormat(str, enum.Enum):
    AUTO = "auto"
    MESSAGES = "messages"
    PROMPT_RESPONSE = "prompt_response"


class Overlong(str, enum.Enum):
    TRUNCATE = "truncate"
    DROP = "drop"


@dataclasses.dataclass(frozen=True)
class SFTDataConfig:
    """Where SFT examples come from and how they become tokens (module docstring; docs/sft_data.md)."""

    paths: tuple[str, ...]
    format: SFTFormat = SFTFormat.AUTO
    messages_field: str = "messages"
    prompt_field: str = "prompt"
    response_field: str = "response"
    reasoning_field: str | None = "reasoning"
    system_field: str | None = None
    template: SFTTemplate = SFTTemplate.CHAT
    max_seq_len: int = 4096
    overlong: Overlong = Overlong.TRUNCATE
    on_error: OnError = OnError.RAISE
    seed: int = 0
    shuffle: bool = True
    cold_start_separator: str = COLD_START_SEPARATOR
    end_of_turn_token: str | None = None  # None: the tokenizer's EOS
    validation_paths: tuple[str, ...] = ()
    validation_fraction: float = 0.0

    def __post_init__(self):
        for name in ("paths", "validation_paths"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, (getattr(self, name),))
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self._check_paths()
        for name, kind in (("format", SFTFormat), ("template", SFTTemplate), ("overlong", Overlong),
                           ("on_error", OnError)):
            object.__setattr__(self, name, _enum_field(name, kind, getattr(self, name)))
        self._check_values()

    def _check_paths(self) -> None:
        if not self.paths:
            raise ValueError("SFTDataConfig.paths must name at least one file")

    def _check_values(self) -> None:
        if not isinstance(self.max_seq_len, int) or self.max_seq_len < 2:
            raise ValueError(f"SFTDataConfig.max_seq_len must be >= 2, got {self.max_seq_len!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"SFTDataConfig.validation_fraction must be in [0, 1), got {self.validation_fraction!r}")
        if self.validation_fraction and self.validation_paths:
            raise ValueError("SFTDataConfig: set validation_paths or validation_fraction, not both")
        for name in ("messages_field", "prompt_field", "response_field", "cold_start_separator"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"SFTDataConfig.{name} must be a non-empty string, got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class SFTExample:
    """One training sequence; ``loss_mask[t]`` (len(tokens) - 1 entries) is 1 iff ``tokens[t + 1]`` is trained on.
    It has the fields of ``training.packing.TrainSequence``, so the packers take it as it is."""

    tokens: list[int]
    loss_mask: list[float]
    source: str  # "file:line"

    @property
    def extras(self) -> dict[str, list[float]]:
        return {}

    @property
    def num_trained(self) -> int:
        return int(sum(self.loss_mask))


@dataclasses.dataclass(frozen=True)
class _Stored:
    """An example as the dataset holds it: 8 bytes a token (Python lists take ~45), built into an SFTExample when
    it is served, so that large distillation sets fit in memory."""

    tokens: np.ndarray  # int32
    loss_mask: np.ndarray  # float32, len(tokens) - 1
    source: str

    @classmethod
    def of(cls, example: SFTExample | _Stored) -> _Stored:
        if isinstance(example, _Stored):
            return example
        if len(example.loss_mask) != len(example.tokens) - 1:
            raise ValueError(f"SFTExample {example.source}: loss_mask has {len(example.loss_mask)} entries, expected "
                             f"len(tokens) - 1 = {len(example.tokens) - 1}")
        return cls(np.asarray(example.tokens, dtype=np.int32), np.asarray(example.loss_mask, dtype=np.float32),
                   example.source)

    def example(self) -> SFTExample:
        return SFTExample(self.tokens.tolist(), self.loss_mask.tolist(), self.source)

    def summary(self) -> str:
        """What the resume fingerprint covers."""
        return f"{self.source} {len(self.tokens)} {int(np.count_nonzero(self.loss_mask))}"


@dataclasses.dataclass(frozen=True)
class _At:
    """Where a record is, for its errors."""

    path: str
    line: int

    def error(self, problem: str, field: str | None, kind: str) -> DataError:
        return DataError(self.path, self.line, problem, field, kind)


def _parse_message(at: _At, field: str, k: int, message: Any) -> Message:
    if not isinstance(message, dict):
        raise at.error(f"message {k} is {value_kind(message)}, not an object with role and content", field,
                       "bad_message")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise at.error(f"message {k} has role {role!r}; expected system, user or assistant", field, "bad_message")
    if not isinstance(content, str):
        raise at.error(f"message {k} ({role}): content must be a string, got {value_kind(content)}", field,
                       "bad_message")
    reasoning = message.get("reasoning_content")
    if reasoning is not None and not isinstance(reasoning, str):
        raise at.error(f"message {k} ({role}): reasoning_content must be a string, got {value_kind(reasoning)}",
                       field, "bad_message")
    return Message(role, content, reasoning)


def _parse_messages(at: _At, record: dict[str, Any], field: str) -> list[Message]:
    value = record.get(field)
    if value is None:
        raise at.error("missing (or null)", field, "missing_field")
    if not isinstance(value, list) or not value:
        got = value_kind(value) if value else "an empty list"
        raise at.error(f"expected a non-empty list of messages, got {got}", field, "bad_message")
    return [_parse_message(at, field, k, m) for k, m in enumerate(value, start=1)]


def _text(at: _At, record: dict[str, Any], field: str, required: bool = True) -> str | None:
    return text_field(at.path, at.line, record, field, required)  # numbers as text, as the prompt data does


class _ExampleBuilder:
    """Records -> examples for one config, counting what it skips, truncates and drops in ``stats``."""

    def __init__(self, config: SFTDataConfig, tokenizer: Tokenizer):
        self.config = config
        self.renderer = ChatRenderer(tokenizer, config.template, config.cold_start_separator,
                                     config.end_of_turn_token)
        self.stats: collections.Counter[str] = collections.Counter()

    def build(self, records: Iterable[tuple[str, int, dict[str, Any] | DataError]]) -> list[_Stored]:
        examples = []
        for path, line, record in records:
            try:
                if isinstance(record, DataError):
                    raise record
                example = self._fit(self._example(_At(path, line), record))
            except DataError as e:
                if self.config.on_error is OnError.RAISE:
                    raise
                self.stats[f"skipped_{e.kind}"] += 1
                continue
            if example is not None:
                examples.append(example)
                self.stats.update(kept=1, tokens=len(example.tokens),
                                  trained_tokens=int(np.count_nonzero(example.loss_mask)))
        return examples

    def _messages(self, at: _At, record: dict[str, Any]) -> tuple[list[Message], str]:
        """The conversation, and the field its errors name."""
        cfg, fmt = self.config, self.config.format
        if fmt is SFTFormat.AUTO:
            fmt = SFTFormat.MESSAGES if cfg.messages_field in record else SFTFormat.PROMPT_RESPONSE
        if fmt is SFTFormat.MESSAGES:
            return _parse_messages(at, record, cfg.messages_field), cfg.messages_field
        prompt, response = _text(at, record, cfg.prompt_field), _text(at, record, cfg.response_field)
        reasoning = _text(at, record, cfg.reasoning_field, required=False) if cfg.reasoning_field else None
        system = _text(at, record, cfg.system_field) if cfg.system_field else None
        messages = [Message("system", system)] if system else []
        return messages + [Message("user", prompt), Message("assistant", response, reasoning)], cfg.response_field

    def _example(self, at: _At, record: dict[str, Any]) -> _Stored:
        messages, field = self._messages(at, record)
        try:
            tokens, trained = self.renderer.render(messages)
        except RenderError as e:
            raise at.error(str(e), field, e.kind) from None
        loss_mask = np.asarray(trained[1:], dtype=np.float32)  # the label of position t is token t + 1
        if not loss_mask.any():
            raise at.error("nothing to train on: no assistant tokens", field, "nothing_to_train")
        self.stats["rendered"] += 1
        return _Stored(np.asarray(tokens, dtype=np.int32), loss_mask, source=f"{at.path}:{at.line}")

    def _fit(self, example: _Stored) -> _Stored | None:
        """The example within max_seq_len tokens, or None (dropped and counted)."""
        n = self.config.max_seq_len
        if len(example.tokens) <= n:
            return example
        if self.config.overlong is Overlong.DROP:
            self.stats["dropped_overlong"] += 1
            return None
        loss_mask = example.loss_mask[:n - 1]
        if not loss_mask.any():
            self.stats["dropped_truncated_away"] += 1
            return None
        self.stats["truncated"] += 1
        return _Stored(example.tokens[:n].copy(), loss_mask.copy(), example.source)  # copies free the long arrays


def _file_records(paths: Sequence[str]) -> Iterator[tuple[str, int, dict[str, Any] | DataError]]:
    for path in paths:
        for line, record in read_records(path):
            yield path, line, record


def _hold_out(examples: list[_Stored], fraction: float, seed: int) -> tuple[list[_Stored], list[_Stored]]:
    """(training, validation): round(fraction * n) examples (at least one) chosen by seed, each in file order."""
    order = list(range(len(examples)))
    random.Random(f"{seed}:validation").shuffle(order)
    held = set(order[:max(1, round(fraction * len(examples)))])
    if len(held) == len(examples):
        raise ValueError(f"SFTDataConfig.validation_fraction={fraction} of {len(examples)} examples leaves none to "
                         f"train on")
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


class SFTDataset:
    """Examples held in memory, served in a seeded order reshuffled every epoch from ``(seed, epoch)``.

    ``state_dict()``/``load_state_dict()`` resume at the same position, so a resumed run draws the same examples.
    ``stats`` counts what building the examples skipped, truncated and dropped; ``notes()`` reports it.
    """

    def __init__(self, examples: Sequence[SFTExample], config: SFTDataConfig,
                 stats: collections.Counter[str] | None = None, split: str = "train"):
        if not examples:
            raise ValueError(f"SFTDataset: no {split} examples")
        self._stored, self.config, self.split = [_Stored.of(e) for e in examples], config, split
        self.stats = stats if stats is not None else collections.Counter(kept=len(self._stored))
        self._fingerprint = hashlib.sha1("\n".join(e.summary() for e in self._stored).encode()).hexdigest()[:16]
        self._order = EpochOrder(len(self._stored), config.seed, config.shuffle)

    def __len__(self) -> int:
        return len(self._stored)

    def __getitem__(self, i: int) -> SFTExample:
        return self._stored[i].example()

    @property
    def examples(self) -> list[SFTExample]:
        """Every example, in file order (built anew on each call: for small sets and tests)."""
        return [e.example() for e in self._stored]

    def lengths(self) -> list[int]:
        """Tokens per example, in file order (for length statistics and batch planning)."""
        return [len(e.tokens) for e in self._stored]

    @property
    def epoch(self) -> int:
        """The epoch the next example comes from (0-based)."""
        return self._order.epoch + (self._order.position == self._order.n)

    @property
    def epoch_progress(self) -> float:
        """Epochs served so far, fractional (1.5: one epoch and half of the next)."""
        return self._order.progress

    def next_batch(self, n: int) -> list[SFTExample]:
        """The next ``n`` examples; a batch that ends an epoch continues into the next (a new permutation)."""
        return [self._stored[i].example() for i in self._order.take(n)]

    def iter_batches(self, n: int) -> Iterator[list[SFTExample]]:
        """One pass over all examples in file order, ``n`` at a time (the last batch may be short); the training
        position is untouched (for validation)."""
        for start in range(0, len(self._stored), n):
            yield [e.example() for e in self._stored[start:start + n]]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._order.epoch, "position": self._order.position, "seed": self.config.seed,
                "num_examples": len(self._stored), "fingerprint": self._fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume where ``state`` was taken; the dataset must be built from the same data, config and seed."""
        mine = self.state_dict()
        differs = [k for k in ("seed", "num_examples", "fingerprint") if state.get(k) != mine[k]]
        if differs:
            theirs = ", ".join(f"{k} {state.get(k)!r}" for k in differs)
            ours = ", ".join(f"{k} {mine[k]!r}" for k in differs)
            raise ValueError(f"SFTDataset.load_state_dict: the state is for {theirs}; this dataset has {ours} (the "
                             f"data files, tokenizer, template or max_seq_len changed)")
        self._order.load(state["epoch"], state["position"])

    def notes(self) -> list[str]:
        """One line per thing building the examples skipped, cut or dropped, for the run's start-up output (in
        terms of the run config's data.* keys, which are this config's fields)."""
        return _notes(self.stats, self.config, "sft data" if self.split == "train" else f"sft {self.split} data")


def _notes(stats: collections.Counter[str], config: SFTDataConfig, prefix: str) -> list[str]:
    notes, rendered, n = [], stats["rendered"], config.max_seq_len
    skipped = {k.removeprefix("skipped_"): v for k, v in sorted(stats.items()) if k.startswith("skipped_")}
    if skipped:
        kinds = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items())
        notes.append(f"{prefix}: skipped {sum(skipped.values())} bad records (data.on_error=skip): {kinds}")
    if stats["truncated"]:
        notes.append(f"{prefix}: {stats['truncated']} of {rendered} examples truncated to {n} tokens "
                     f"(data.max_seq_len; data.overlong=truncate)")
    if stats["dropped_truncated_away"]:
        notes.append(f"{prefix}: dropped {stats['dropped_truncated_away']} of {rendered} examples whose trained "
                     f"tokens all lie past the first {n} tokens (data.max_seq_len)")
    if stats["dropped_overlong"]:
        notes.append(f"{prefix}: dropped {stats['dropped_overlong']} of {rendered} examples longer than {n} tokens "
                     f"(data.max_seq_len; data.overlong=drop)")
    if stats["held_out"]:
        notes.append(f"{prefix}: held out {stats['held_out']} of {stats['kept']} examples for validation "
                     f"(data.validation_fraction={config.validation_fraction}, seed {config.seed})")
    return notes


@dataclasses.dataclass(frozen=True)
class SFTSplits:
    train: SFTDataset
    validation: SFTDataset | None

    def notes(self) -> list[str]:
        """The training set's notes, then the validation files' (a held-out share has none of its own)."""
        return self.train.notes() + (self.validation.notes() if self.validation is not None else [])


def _build(config: SFTDataConfig, tokenizer: Tokenizer, records, where: Sequence[str], split: str) -> SFTDataset:
    builder = _ExampleBuilder(config, tokenizer)
    examples = builder.build(records)
    if not examples:
        which = "training" if split == "train" else split
        raise ValueError(f"sft data: no usable {which} examples in {list(where)} (stats: {dict(builder.stats)})")
    return SFTDataset(examples, config, builder.stats, split)


def load_sft_datasets(config: SFTDataConfig, tokenizer: Tokenizer, records: Sequence[dict[str, Any]] | None = None,
                      source: str = "<memory>") -> SFTSplits:
    """The training set (and the validation set, when configured) of ``config``; ``records`` replaces the files
    of ``config.paths`` with in-memory records (e.g. rejection-sampled responses), named ``source`` in errors."""
    train_records = _file_records(config.paths) if records is None else \
        ((source, i, r) for i, r in enumerate(records, start=1))
    train = _build(config, tokenizer, train_records, config.paths if records is None else [source], "train")
    if config.validation_paths:
        validation = _build(config, tokenizer, _file_records(config.validation_paths), config.validation_paths,
                            "validation")
        return SFTSplits(train, validation)
    if not config.validation_fraction:
        return SFTSplits(train, None)
    kept, held = _hold_out(train._stored, config.validation_fraction, config.seed)
    train.stats["held_out"] = len(held)
    return SFTSplits(SFTDataset(kept, config, train.stats, "train"), SFTDataset(held, config, split="validation"))


def _enum_field(name: str, kind: type[enum.Enum], value):
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in kind)
        raise ValueError(f"SFTDataConfig.{name} must be one of {allowed}, got {value!r}") from None
