"""Prompt datasets from local files: field mapping, templates, length filtering, seeded shuffling, resumption."""
from __future__ import annotations

import collections
import dataclasses
import enum
from typing import Any, Iterable, Sequence

from r1_megatron.rewards.code_reward import parse_test_cases
from r1_megatron.rewards.registry import DEFAULT_KIND
from r1_megatron.tokenizer import Tokenizer

from .epoch_order import EpochOrder
from .answer_format import AnswerFormat, UnreadableAnswer, reference_answer, resolve_answer_format
from .records import DataError, read_records, text_field
from .templates import PromptTemplate, render_prompt


class OnError(str, enum.Enum):
    """What a bad record (malformed line, missing or unusable field, unreadable answer) does: stop the run, or be
    counted."""

    RAISE = "raise"
    SKIP = "skip"


@dataclasses.dataclass(frozen=True)
class PromptDataConfig:
    """Where prompts come from and how they become model inputs.

    ``answer_field``/``tests_field`` may be None when a task has no answer (or no tests). ``kind_field``: the
    field naming the prompt's kind (which rewards score it, rewards.kinds); None: every kind is "default".
    ``answer_format`` says where the final answer is in the answer field (see ``answer_format.py``); the sample
    holds that final answer. ``max_prompt_tokens`` drops (and counts) prompts whose token count exceeds it. ``on_error="skip"``
    counts and skips malformed lines, records missing a field or holding an unusable one (docs/data.md) and
    unreadable answers instead of raising.
    """

    paths: tuple[str, ...]
    question_field: str = "question"
    answer_field: str | None = "answer"
    tests_field: str | None = None
    kind_field: str | None = None
    template: PromptTemplate = PromptTemplate.R1_ZERO
    max_prompt_tokens: int | None = None
    seed: int = 0
    shuffle: bool = True
    on_error: OnError = OnError.RAISE
    answer_format: AnswerFormat = AnswerFormat.AUTO

    def __post_init__(self):
        if isinstance(self.paths, str):
            object.__setattr__(self, "paths", (self.paths,))
        if not self.paths:
            raise ValueError("PromptDataConfig.paths must name at least one file")
        object.__setattr__(self, "template", PromptTemplate(self.template))
        for name, kind in (("on_error", OnError), ("answer_format", AnswerFormat)):
            object.__setattr__(self, name, _enum_field(name, kind, getattr(self, name)))
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ValueError(f"PromptDataConfig.max_prompt_tokens must be >= 1, got {self.max_prompt_tokens!r}")


@dataclasses.dataclass(frozen=True)
class PromptSample:
    question: str
    answer: str | None
    tests: Any
    prompt: str
    prompt_ids: tuple[int, ...] | None
    source: str  # "file:line"
    kind: str = DEFAULT_KIND

    def reward_sample(self) -> dict[str, Any]:
        """The mapping the rewards read: ``answer``, ``tests`` (rule rewards), ``question`` and ``kind`` (model
        rewards and rewards.kinds)."""
        return {"answer": self.answer, "tests": self.tests, "question": self.question, "kind": self.kind}


class PromptDataset:
    """All prompts of the configured files, held in memory (prompt sets are small), served in a seeded order.

    ``next_batch(n)`` walks a permutation of the samples that is reshuffled every epoch from ``(seed, epoch)``;
    ``state_dict()``/``load_state_dict()`` resume at the same position. ``stats`` counts what was dropped.
    """

    def __init__(self, config: PromptDataConfig, tokenizer: Tokenizer | None = None,
                 records: Iterable[tuple[str, int, dict[str, Any] | DataError]] | None = None):
        if (config.max_prompt_tokens is not None or config.template is PromptTemplate.CHAT) and tokenizer is None:
            raise ValueError("PromptDataset: max_prompt_tokens and the chat template need a tokenizer")
        self.config, self.tokenizer = config, tokenizer
        self.stats: collections.Counter[str] = collections.Counter()
        source = records if records is not None else self._file_records()
        self.samples: list[PromptSample] = [s for s in (self._sample(*r) for r in source) if s is not None]
        if not self.samples:
            raise ValueError(f"PromptDataset: no usable prompts in {list(config.paths)} (stats: {dict(self.stats)})")
        self.order = EpochOrder(len(self.samples), config.seed, config.shuffle)

    @classmethod
    def from_records(cls, records: Sequence[dict[str, Any]], config: PromptDataConfig,
                     tokenizer: Tokenizer | None = None, source: str = "<memory>") -> "PromptDataset":
        """A dataset over in-memory records (e.g. a synthetic task), validated like file records."""
        return cls(config, tokenizer, records=((source, i, r) for i, r in enumerate(records, start=1)))

    def _file_records(self):
        for path in self.config.paths:
            for line, record in read_records(path):
                yield path, line, record

    def _sample(self, path: str, line: int, record: dict[str, Any] | DataError) -> PromptSample | None:
        """The record's sample; None when it is skipped (counted by kind) or too long (counted)."""
        try:
            if isinstance(record, DataError):
                raise record
            question, answer, tests = self._fields(path, line, record)
            kind = text_field(path, line, record, self.config.kind_field) if self.config.kind_field else DEFAULT_KIND
        except DataError as e:
            if self.config.on_error is OnError.RAISE:
                raise
            self.stats[f"skipped_{e.kind}"] += 1
            return None
        prompt = render_prompt(self.config.template, question, self.tokenizer)
        ids = tuple(self.tokenizer.encode(prompt)) if self.tokenizer is not None else None
        if self.config.max_prompt_tokens is not None and len(ids) > self.config.max_prompt_tokens:
            self.stats["filtered_too_long"] += 1
            return None
        self.stats["kept"] += 1
        return PromptSample(question, answer, tests, prompt, ids, source=f"{path}:{line}", kind=kind)

    def _fields(self, path: str, line: int, record: dict[str, Any]) -> tuple[str, str | None, Any]:
        """(question, final answer, tests) of a record; DataError naming the field when one is unusable."""
        cfg = self.config
        question = text_field(path, line, record, cfg.question_field)
        if not question.strip():
            raise DataError(path, line, "empty (or only whitespace)", cfg.question_field, "bad_field")
        answer = self._answer(path, line, text_field(path, line, record, cfg.answer_field)
                              if cfg.answer_field is not None else None)
        return question, answer, self._tests(path, line, record)

    def _answer(self, path: str, line: int, text: str | None) -> str | None:
        """The final answer of the record's answer field, in the configured format (AUTO: counted per format)."""
        if text is None:
            return None
        try:
            answer = reference_answer(text, self.config.answer_format)
        except UnreadableAnswer as e:
            fmt = self.config.answer_format.value
            raise DataError(path, line, f"{e} with answer_format={fmt}: {text!r:.80}", self.config.answer_field,
                            "unreadable_answer") from None
        if self.config.answer_format is AnswerFormat.AUTO and answer != text:
            self.stats[f"answer_read_as_{resolve_answer_format(text, AnswerFormat.AUTO).value}"] += 1
        return answer

    def _tests(self, path: str, line: int, record: dict[str, Any]) -> Any:
        """The tests field as it is, checked now with code_tests' own parser so that a bad one names its line
        (at scoring time it would only score 0)."""
        name = self.config.tests_field
        if name is None:
            return None
        tests = record.get(name)
        if tests is None:
            raise DataError(path, line, "missing (or null)", name, "missing_field")
        try:
            parse_test_cases(tests)
        except ValueError as e:
            raise DataError(path, line, str(e), name, "bad_field") from None
        return tests

    def notes(self) -> list[str]:
        """One line per thing building the dataset changed or dropped, for the run's start-up output (in terms of
        the run config's data.* keys, which are this config's fields)."""
        stats, notes = self.stats, []
        gsm8k, boxed = stats["answer_read_as_gsm8k"], stats["answer_read_as_boxed"]
        if gsm8k or boxed:
            notes.append(f"data: answer_format=auto read the reference answer of {gsm8k} records as GSM8K (the text "
                         f"after the last '####') and of {boxed} as the last \\boxed{{}}; set data.answer_format to "
                         f"gsm8k, boxed or raw to choose explicitly")
        skipped = {k.removeprefix("skipped_"): v for k, v in sorted(stats.items()) if k.startswith("skipped_")}
        if skipped:
            kinds = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items())
            notes.append(f"data: skipped {sum(skipped.values())} bad records (data.on_error=skip): {kinds}")
        if stats["filtered_too_long"]:
            notes.append(f"data: dropped {stats['filtered_too_long']} prompts longer than data.max_prompt_tokens="
                         f"{self.config.max_prompt_tokens}")
        return notes

    def __len__(self) -> int:
        return len(self.samples)

    def next_batch(self, n: int) -> list[PromptSample]:
        """The next ``n`` samples; crosses epoch boundaries (a new permutation each epoch)."""
        return [self.samples[i] for i in self.order.take(n)]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.order.epoch, "position": self.order.position, "seed": self.config.seed,
                "num_samples": len(self.samples)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume where ``state`` was taken; the dataset must be built from the same data and seed."""
        if state["seed"] != self.config.seed or state["num_samples"] != len(self.samples):
            raise ValueError(f"PromptDataset.load_state_dict: state is for seed {state['seed']} and "
                             f"{state['num_samples']} samples; this dataset has seed {self.config.seed} and "
                             f"{len(self.samples)} samples")
        self.order.load(state["epoch"], state["position"])


def _enum_field(name: str, kind: type[enum.Enum], value):
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in kind)
        raise ValueError(f"PromptDataConfig.{name} must be one of {allowed}, got {value!r}") from None
