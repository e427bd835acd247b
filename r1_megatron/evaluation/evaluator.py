"""Evaluate a model on benchmarks with R1's protocol: k samples per question, each scored, every sample kept.

    runs = [BenchmarkRun.build(spec, load_questions(spec, tokenizer), sampling) for spec in specs]
    Evaluator(engine, tokenizer, sampling, rewards, seed=0).run(runs, store)   # store: sample_store.SampleStore
    results = benchmark_results(runs[0].header(), store.records)                # report.py

Questions go through the engine in rounds; a round's questions are split over the data-parallel ranks, every rank
of a model-parallel group generates its share together (generate_and_score), the ranks' samples are gathered, and
rank 0 appends them to the store, so a killed evaluation resumes after the last finished round. A question's k
samples are one request whose seed is a function of (seed, benchmark, question index) only, so the samples are
the same for any layout, round size and resume point.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Sequence

import torch.distributed as dist
from megatron.core import parallel_state

from r1_megatron.rewards.runner import RewardConfig, RewardRunner
from r1_megatron.rollout import Engine
from r1_megatron.scored_generation import ScoredSample, generate_and_score
from r1_megatron.training.progress import Progress

from .benchmark_suite import BenchmarkSpec, EvalQuestion
from .config import EvalSampling
from .sample_store import SampleStore
from .scorers import Scorer, get_scorer


@dataclasses.dataclass
class BenchmarkRun:
    """One benchmark as this evaluation runs it: its questions and its metric settings with k resolved."""

    name: str
    scorer: Scorer
    questions: list[EvalQuestion]
    k: int
    pass_ks: tuple[int, ...]  # pass@K reported for these K <= k (always 1)
    cons_k: int | None  # cons@K over the first K samples (None: no vote, e.g. code)
    format: str | None  # reward name of the format rate

    @classmethod
    def build(cls, spec: BenchmarkSpec, questions: list[EvalQuestion], sampling: EvalSampling) -> "BenchmarkRun":
        spec = spec.with_k(sampling.samples_for(spec.k))
        scorer = get_scorer(spec.scorer)
        cons_k = spec.cons_k if scorer.equal is not None else None
        return cls(spec.name, scorer, questions, spec.k, tuple(sorted({1, *spec.pass_ks})), cons_k, spec.format)

    def header(self) -> dict[str, Any]:
        """How its metrics are computed (stored in the samples file: `--samples` needs no benchmark file)."""
        return {"scorer": self.scorer.name.value, "k": self.k, "pass_ks": list(self.pass_ks), "cons_k": self.cons_k,
                "format": self.format, "questions": len(self.questions)}

    def reward_config(self, base: RewardConfig) -> RewardConfig:
        """The rewards its samples need: correctness and, when it reports one, the format."""
        weights = {self.scorer.reward: 1.0} | ({self.format: 1.0} if self.format else {})
        return dataclasses.replace(base, weights=weights, reward_kwargs={})


def question_seed(seed: int, benchmark: str, index: int) -> int:
    """The sampling seed of a question's k samples: a function of (seed, benchmark, question index) only."""
    digest = hashlib.sha256(f"eval:{seed}:{benchmark}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


def sample_record(run: BenchmarkRun, question: EvalQuestion, sample: ScoredSample) -> dict[str, Any]:
    """One line of samples.jsonl (docs/evaluation.md)."""
    correct = sample.rewards[run.scorer.reward] >= run.scorer.correct_threshold
    return {"benchmark": run.name, "question": question.index, "id": question.id, "sample": sample.sample_index,
            "prompt": question.prompt, "text": sample.text, "token_ids": sample.token_ids,
            "finish_reason": sample.finish_reason.value, "rewards": sample.rewards, "correct": bool(correct),
            "answer": sample.answer, "failure": sample.failure,
            "error": sample.error.splitlines()[0] if sample.error else None, "reference": question.reference,
            "scorer": run.scorer.name.value}


class Evaluator:
    def __init__(self, engine: Engine, tokenizer, sampling: EvalSampling, rewards: RewardConfig, *, seed: int = 0,
                 questions_per_round: int | None = None, progress: bool = True):
        """rewards: the reward runner's settings (workers, timeout); each benchmark sets its own rewards.
        questions_per_round: questions generated between two writes of the samples file, over all ranks
        (None: enough for two full engine batches per data-parallel rank)."""
        self.engine, self.tokenizer, self.sampling, self.rewards = engine, tokenizer, sampling, rewards
        self.seed, self.questions_per_round, self.show_progress = seed, questions_per_round, progress
        self.rank = dist.get_rank()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.dp_group = parallel_state.get_data_parallel_group_gloo()
        self.timing = {"generate_s": 0.0, "score_s": 0.0}  # this rank's generation and scoring time so far

    def run(self, runs: Sequence[BenchmarkRun], store: SampleStore | None) -> None:
        """Generate and score every question not in `store` yet (rank 0's store; None on other ranks), appending
        each round's samples to it."""
        done = self._broadcast(store.done() if store is not None else None)
        passed = self._broadcast(_pass_sums(store.records, runs) if store is not None else None)
        total = sum(len(r.questions) for r in runs)
        progress = Progress(max(total, 1), initial_step=len(done), enabled=self.show_progress and self.rank == 0,
                            keys=("pass@1",), metric_names={"pass@1": "pass@1"}, unit="question")
        tally = _Tally(len(done), passed)
        with progress:
            for run in runs:
                pending = [q for q in run.questions if (run.name, q.index) not in done]
                if pending:
                    self._run_benchmark(run, pending, store, lambda records, k: progress.update(*tally.add(records, k)))

    def _run_benchmark(self, run: BenchmarkRun, pending: list[EvalQuestion], store, report) -> None:
        per_round = self.questions_per_round or self.dp_size * max(1, math.ceil(2 * self.engine.max_batch_size
                                                                                / run.k))
        with RewardRunner(run.reward_config(self.rewards)) as rewards:
            for start in range(0, len(pending), per_round):
                records = self._round(run, pending[start:start + per_round], rewards)
                if store is not None:
                    store.append(records)
                report(records, run.k)

    def _round(self, run: BenchmarkRun, questions: list[EvalQuestion], rewards: RewardRunner) -> list[dict]:
        """Every rank generates and scores its share; returns the round's records from all ranks, in question
        and sample order."""
        share = questions[self.dp_rank::self.dp_size]
        params = [self.sampling.params(run.k, question_seed(self.seed, run.name, q.index)) for q in share]
        batch = generate_and_score(self.engine, self.tokenizer, [q.prompt_ids for q in share],
                                   [q.reference for q in share], params, rewards, extract=run.scorer.extract)
        self.timing["generate_s"] += batch.generate_s
        self.timing["score_s"] += batch.reward_s
        mine = [sample_record(run, share[s.prompt_index], s) for s in batch.samples]
        gathered = [mine]
        if self.dp_size > 1:
            gathered = [None] * self.dp_size
            dist.all_gather_object(gathered, mine, group=self.dp_group)
        return sorted((r for part in gathered for r in part), key=lambda r: (r["question"], r["sample"]))

    def _broadcast(self, value):
        """Rank 0's `value` on every rank."""
        box = [value]
        if dist.get_world_size() > 1:
            dist.broadcast_object_list(box, src=0)
        return box[0]


@dataclasses.dataclass
class _Tally:
    """Questions done and the sum of their pass@1, for the progress bar's running pass@1."""

    questions: int
    passed: float

    def add(self, records: list[dict], k: int) -> tuple[int, dict[str, float]]:
        """Count a round's records (k per question); returns the progress bar's (position, metrics)."""
        self.questions += len(records) // k
        self.passed += sum(r["correct"] for r in records) / k
        return self.questions, {"pass@1": self.passed / max(self.questions, 1)}


def _pass_sums(records: list[dict], runs: Sequence[BenchmarkRun]) -> float:
    """Σ over the stored questions of their pass@1 (the progress bar's running mean starts from them)."""
    k = {r.name: r.k for r in runs}
    return sum(r["correct"] / k[r["benchmark"]] for r in records if r["benchmark"] in k)
