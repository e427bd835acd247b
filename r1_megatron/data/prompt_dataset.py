"""Prompt datasets from local files: field mapping, templates, length filtering, seeded shuffling, resumption."""
from __future__ import annotations

import collections
import dataclasses
import random
from typing import Any, Iterable, Sequence

from r1_megatron.tokenizer import Tokenizer

from .records import DataError, read_records
from .templates import PromptTemplate, render_prompt

ON_ERROR = ("raise", "skip")


@dataclasses.dataclass(frozen=True)
class PromptDataConfig:
    """Where prompts come from and how they become model inputs.

    ``answer_field``/``tests_field`` may be None when a task has no answer (or no tests). ``max_prompt_tokens``
    drops (and counts) prompts whose token count exceeds it. ``on_error="skip"`` counts and skips malformed
    lines and records missing a field instead of raising.
    """

    paths: tuple[str, ...]
    question_field: str = "question"
    answer_field: str | None = "answer"
    tests_field: str | None = None
    template: PromptTemplate = PromptTemplate.R1_ZERO
    max_prompt_tokens: int | None = None
    seed: int = 0
    shuffle: bool = True
    on_error: str = "raise"

    def __post_init__(self):
        if isinstance(self.paths, str):
            object.__setattr__(self, "paths", (self.paths,))
        if not self.paths:
            raise ValueError("PromptDataConfig.paths must name at least one file")
        object.__setattr__(self, "template", PromptTemplate(self.template))
        if self.on_error not in ON_ERROR:
            raise ValueError(f"PromptDataConfig.on_error must be one of {ON_ERROR}, got {self.on_error!r}")
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

    def reward_sample(self) -> dict[str, Any]:
        """The mapping the reward registry reads (``answer``, ``tests``)."""
        return {"answer": self.answer, "tests": self.tests}


class PromptDataset:
    """All prompts of the configured files, held in memory (prompt sets are small), served in a seeded order.

    ``next_batch(n)`` walks a permutation of the samples that is reshuffled every epoch from ``(seed, epoch)``;
    ``state_dict()``/``load_state_dict()`` resume at the same position. ``stats`` counts what was dropped.
    """

    def __init__(self, config: PromptDataConfig, tokenizer: Tokenizer | None = None,
                 records: Iterable[tuple[str, int, dict[str, Any]]] | None = None):
        if (config.max_prompt_tokens is not None or config.template is PromptTemplate.CHAT) and tokenizer is None:
            raise ValueError("PromptDataset: max_prompt_tokens and the chat template need a tokenizer")
        self.config, self.tokenizer = config, tokenizer
        self.stats: collections.Counter[str] = collections.Counter()
        source = records if records is not None else self._file_records()
        self.samples: list[PromptSample] = [s for s in (self._sample(*r) for r in source) if s is not None]
        if not self.samples:
            raise ValueError(f"PromptDataset: no usable prompts in {list(config.paths)} (stats: {dict(self.stats)})")
        self._epoch, self._position = 0, 0
        self._order = self._permutation(0)

    @classmethod
    def from_records(cls, records: Sequence[dict[str, Any]], config: PromptDataConfig,
                     tokenizer: Tokenizer | None = None, source: str = "<memory>") -> "PromptDataset":
        """A dataset over in-memory records (e.g. a synthetic task), validated like file records."""
        return cls(config, tokenizer, records=((source, i, r) for i, r in enumerate(records, start=1)))

    def _file_records(self):
        for path in self.config.paths:
            for line, record in read_records(path):
                if isinstance(record, DataError):
                    self._fail(record, "malformed")
                else:
                    yield path, line, record

    def _fail(self, error: DataError, kind: str) -> None:
        if self.config.on_error == "raise":
            raise error
        self.stats[f"skipped_{kind}"] += 1

    def _field(self, path, line, record, name, required=True):
        if name is None:
            return None
        if name not in record or record[name] is None:
            if required:
                self._fail(DataError(path, line, "missing (or null)", field=name), "missing_field")
                raise _Skip
            return None
        value = record[name]
        return value if name == self.config.tests_field else str(value)

    def _sample(self, path: str, line: int, record: dict[str, Any]) -> PromptSample | None:
        try:
            question = self._field(path, line, record, self.config.question_field)
            answer = self._field(path, line, record, self.config.answer_field)
            tests = self._field(path, line, record, self.config.tests_field)
        except _Skip:
            return None
        prompt = render_prompt(self.config.template, question, self.tokenizer)
        ids = tuple(self.tokenizer.encode(prompt)) if self.tokenizer is not None else None
        if self.config.max_prompt_tokens is not None and len(ids) > self.config.max_prompt_tokens:
            self.stats["filtered_too_long"] += 1
            return None
        self.stats["kept"] += 1
        return PromptSample(question, answer, tests, prompt, ids, source=f"{path}:{line}")

    def __len__(self) -> int:
        return len(self.samples)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.samples)))
        if self.config.shuffle:
            random.Random(f"{self.config.seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self, n: int) -> list[PromptSample]:
        """The next ``n`` samples; crosses epoch boundaries (a new permutation each epoch)."""
        batch = []
        while len(batch) < n:
            if self._position == len(self._order):
                self._epoch, self._position = self._epoch + 1, 0
                self._order = self._permutation(self._epoch)
            batch.append(self.samples[self._order[self._position]])
            self._position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "position": self._position, "seed": self.config.seed,
                "num_samples": len(self.samples)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume where ``state`` was taken; the dataset must be built from the same data and seed."""
        if state["seed"] != self.config.seed or state["num_samples"] != len(self.samples):
            raise ValueError(f"PromptDataset.load_state_dict: state is for seed {state['seed']} and "
                             f"{state['num_samples']} samples; this dataset has seed {self.config.seed} and "
                             f"{len(self.samples)} samples")
        self._epoch, self._position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self._epoch)


class _Skip(Exception):
    """A record was counted as skipped (on_error="skip")."""
