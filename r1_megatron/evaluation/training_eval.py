"""Evaluation inside a training run: every N steps (and before the first, and after the last) the policy answers
a held-out benchmark with R1's protocol, and pass@1, pass@K and cons@K go into the step's metrics (eval/pass@1,
eval/cons@16, ...), so metrics.jsonl, TensorBoard and the plots show them over steps, as R1's Figure 1 does.

The evaluation runs on the trainer's own engine and weights, between two steps; its samples go to
RUN_DIR/eval/step_N.jsonl (a run killed during an evaluation reuses that step's finished questions on resume).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch.distributed as dist

from r1_megatron.rewards.runner import RewardConfig
from r1_megatron.rollout import Engine
from r1_megatron.run_config import config_to_dict

from .benchmark_suite import EvalQuestion, load_benchmarks, load_questions
from .config import HELD_OUT, TrainingEvalConfig
from .evaluator import BenchmarkRun, Evaluator
from .report import benchmark_results
from .sample_store import SampleStore
from .scorers import Scorer

SHOWN = ("pass@1", "cons@", "response_length/mean", "truncated_frac", "format_rate")


def held_out_questions(samples, name: str = HELD_OUT) -> list[EvalQuestion]:
    """A task's held-out PromptSamples as evaluation questions."""
    return [EvalQuestion(benchmark=name, index=i, id=s.source, question=s.question, prompt=s.prompt,
                         prompt_ids=tuple(s.prompt_ids), reference=s.reward_sample(), source=s.source)
            for i, s in enumerate(samples)]


class TrainingEvaluation:
    def __init__(self, cfg: TrainingEvalConfig, run_dir: Path, tokenizer, *, rewards: RewardConfig,
                 max_new_tokens: int, seed: int, held_out: list[EvalQuestion] | None, held_out_scorer: Scorer | None,
                 say: Callable[[str], None] = print):
        """held_out/held_out_scorer: the task's held-out questions and how they are scored (None: it has none);
        max_new_tokens: the generation length when evaluation.sampling.max_new_tokens is null; rewards: the
        scoring processes' settings (the benchmark sets its own rewards)."""
        self.cfg, self.say, self.tokenizer, self.rewards, self.seed = cfg, say, tokenizer, rewards, seed
        self.dir = Path(run_dir) / "eval"
        self.sampling = cfg.sampling.resolved(max_new_tokens)
        self.benchmark = self._benchmark(tokenizer, held_out, held_out_scorer)

    @property
    def max_seq_len(self) -> int:
        """The engine length the evaluation needs: its longest prompt plus its generation length."""
        return max(len(q.prompt_ids) for q in self.benchmark.questions) + self.sampling.max_new_tokens + 1

    def _benchmark(self, tokenizer, held_out, held_out_scorer) -> BenchmarkRun:
        cfg = self.cfg
        if cfg.benchmark == HELD_OUT:
            if not held_out or held_out_scorer is None:
                raise ValueError("evaluation.benchmark=held_out: this run's task has no held-out examples; name a "
                                 "benchmark of evaluation.benchmarks_file (docs/evaluation.md)")
            questions = held_out[:cfg.limit] if cfg.limit else held_out
            k = self.sampling.samples_for(cfg.sampling.k)
            cons_k = k if held_out_scorer.equal is not None else None
            return BenchmarkRun(HELD_OUT, held_out_scorer, list(questions), k, tuple(sorted({1, k})), cons_k, None)
        (spec,) = load_benchmarks(cfg.benchmarks_file, [cfg.benchmark])
        if cfg.limit:
            spec = dataclasses.replace(spec, limit=cfg.limit)
        return BenchmarkRun.build(spec, load_questions(spec, tokenizer), self.sampling)

    def due(self, step: int, total_steps: int) -> bool:
        """After step `step` (0: before the first step)."""
        if step == 0:
            return self.cfg.at_start
        return step % self.cfg.every_steps == 0 or step == total_steps

    def evaluate(self, step: int, engine: Engine) -> dict[str, float]:
        """The metrics of an evaluation of the weights `engine` reads, the same on every rank (collective)."""
        run = self.benchmark
        rank0 = dist.get_rank() == 0
        header = {"settings": {"step": step, "seed": self.seed, "sampling": config_to_dict(self.sampling)},
                  "benchmarks": {run.name: run.header()}}
        store = SampleStore(self.dir / f"step_{step:08d}.jsonl", header, {run.name: run.k}) if rank0 else None
        evaluator = Evaluator(engine, self.tokenizer, self.sampling, self.rewards, seed=self.seed, progress=False)
        try:
            evaluator.run([run], store)
            results = benchmark_results(header["benchmarks"][run.name], store.records) if rank0 else None
        finally:
            if store is not None:
                store.close()
        box = [results]
        if dist.get_world_size() > 1:
            dist.broadcast_object_list(box, src=0)
        metrics = _flat(box[0])
        shown = {k.removeprefix("eval/"): v for k, v in metrics.items() if k.removeprefix("eval/").startswith(SHOWN)}
        self.say(f"eval: step {step}: {run.name} " + " ".join(f"{k}={v:.3f}" for k, v in shown.items()))
        return metrics


def _flat(results: dict) -> dict[str, float]:
    """eval/<metric> for the numbers of a benchmark's results (failures summed into eval/failures)."""
    out = {f"eval/{k}": float(v) for k, v in results.items() if isinstance(v, (int, float)) and k not in
           ("questions", "samples", "k")}
    out["eval/failures"] = float(sum(results.get("failures", {}).values()))
    return out
