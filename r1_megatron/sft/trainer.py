"""The SFT trainer (`r1-megatron train sft`): cold-start SFT, SFT on rejection-sampled data, distillation.

Each step: the next `batch_size` examples of the seeded, resumable order (every rank draws the same global batch
and keeps its data-parallel share) → micro-batches, packed by a token budget or padded → masked next-token
cross-entropy over the assistant tokens, normalised by the global batch's trained-token count → one optimizer
step (warmup, cosine decay to a tenth of the peak, gradient clipping) → log; validation loss every N steps;
checkpoints, exact resume, SIGTERM and the final HF export as every run has them (training/run.py).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from r1_megatron.data.sft_dataset import SFTSplits, load_sft_datasets
from r1_megatron.data.answer_format import AnswerFormat
from r1_megatron.data.prompt_dataset import PromptDataConfig, PromptDataset
from r1_megatron.data.synthetic_chat import build_chat_tokenizer, chat_questions, chat_records
from r1_megatron.data.templates import PromptTemplate
from r1_megatron.evaluation.scorers import ScorerName, get_scorer
from r1_megatron.evaluation.training_eval import TrainingEvaluation, held_out_questions
from r1_megatron.rollout import Engine
from r1_megatron.tokenizer import load_tokenizer
from r1_megatron.training.run import Run
from r1_megatron.training.step_stats import StepStats

from .config import SFTRunConfig
from .step import SFTStepResult, sft_loss, sft_step

HELD_OUT_QUESTIONS = 64  # synthetic chats: held-out questions for the periodic evaluation
HELD_OUT_SEED_OFFSET = 1_000_003  # drawn from another stream than the training chats
PROGRESS_KEYS = {"loss": "loss", "val": "val/loss", "lr": "lr", "tok/s": "throughput/tokens_per_s"}


class SFTTrainer:
    def __init__(self, cfg: SFTRunConfig, *, resume: bool = False):
        self.cfg = cfg
        self.run = run = Run(cfg, resume=resume, command="train sft")
        run.tokenizer_dir = self._tokenizer_dir()
        self.tokenizer = load_tokenizer(run.tokenizer_dir)
        self.splits = self._load_data()
        for line in self.splits.notes():
            run.say(line)
        self.data, self.validation = self.splits.train, self.splits.validation
        t = cfg.training
        self.total_steps = t.steps or math.ceil(t.epochs * len(self.data) / t.batch_size)
        self.batching = t.batching()
        self.evaluation = self._training_evaluation() if cfg.evaluation.enabled else None
        self.policy = run.build_policy()
        self._check_vocab()
        self.engine = Engine(self.policy, max_batch_size=cfg.evaluation.max_batch_size,
                             max_seq_len=self.evaluation.max_seq_len, eos_token_ids=[self.tokenizer.eos_token_id],
                             seed=cfg.seed) if self.evaluation is not None else None
        self.optimizer, self.scheduler = run.build_optimizer(total_steps=self.total_steps)
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else \
            torch.device("cpu")
        run.track("data", self.data)
        run.restore()
        run.say(f"sft: {len(self.data)} training examples, {self.total_steps} steps of {t.batch_size} "
                f"({self.total_steps * t.batch_size / len(self.data):.2f} epochs)")

    def train(self) -> Path:
        run, t = self.run, self.cfg.training
        with run.loop(self.total_steps, keys=tuple(PROGRESS_KEYS), metric_names=PROGRESS_KEYS) as loop:
            if run.step == 0 and self._evaluation_due():
                loop.log_before_first_step(self.evaluation.evaluate(0, self.engine))
            while loop.running():
                started = time.perf_counter()
                share = self.data.next_batch(t.batch_size)[run.dp_rank::run.dp_size]
                result = sft_step(self.policy, self.optimizer, self.scheduler, share, self.batching,
                                  self.tokenizer.pad_token_id, self.device)
                run.guard.record(result.step)  # a non-finite update is skipped, counted, and may stop the run
                run.step += 1
                record = self.step_metrics(result, time.perf_counter() - started)
                if self._validation_due():
                    record["val/loss"] = self.validation_loss()
                if self._evaluation_due():
                    record |= self.evaluation.evaluate(run.step, self.engine)
                loop.end_step(record)
        return run.finish(self.total_steps)

    def step_metrics(self, result: SFTStepResult, seconds: float) -> dict[str, float]:
        stats = StepStats()
        stats.total("tokens", float(result.tokens))
        stats.total("tokens/computed", float(result.computed))
        out = stats.reduce(self.run.dp_group)
        step = result.step
        return {"loss": step.loss, "grad_norm": step.grad_norm, "lr": step.lr, "epoch": self.data.epoch_progress,
                "tokens/trained": float(step.units), "tokens/real": out["tokens"],
                "packing/efficiency": out["tokens"] / max(out["tokens/computed"], 1.0),
                "throughput/tokens_per_s": out["tokens"] / max(seconds, 1e-9), "time/step": seconds}

    def _validation_due(self) -> bool:
        every, step = self.cfg.training.validate_every, self.run.step
        return self.validation is not None and (step == self.total_steps or (every > 0 and step % every == 0))

    def _evaluation_due(self) -> bool:
        return self.evaluation is not None and self.evaluation.due(self.run.step, self.total_steps)

    def validation_loss(self) -> float:
        """Mean cross-entropy per trained token over the whole validation set (every rank takes its share of
        each batch; the loss is normalised over all ranks' tokens)."""
        loss_sum = units = 0.0
        for batch in self.validation.iter_batches(self.cfg.training.batch_size):
            share = batch[self.run.dp_rank::self.run.dp_size]
            loss, n = sft_loss(self.policy, share, self.batching, self.tokenizer.pad_token_id, self.device)
            loss_sum, units = loss_sum + loss * n, units + n
        return loss_sum / max(units, 1.0)

    # ------------------------------------------------------------------------------------------- set-up

    def _tokenizer_dir(self) -> str:
        data = self.cfg.data
        if data.tokenizer is not None:
            return data.tokenizer
        if data.synthetic == "chat":
            return build_chat_tokenizer(self.run.run_dir / "tokenizer")
        if self.cfg.model.path is None:
            raise ValueError("data.tokenizer: a preset model with conversation files needs a tokenizer directory")
        return self.cfg.model.path

    def _load_data(self) -> SFTSplits:
        data = self.cfg.data
        config = data.dataset_config()
        if data.synthetic == "chat":
            return load_sft_datasets(config, self.tokenizer, chat_records(data.num_synthetic, data.seed),
                                     source="synthetic:chat")
        return load_sft_datasets(config, self.tokenizer)

    def _training_evaluation(self) -> TrainingEvaluation:
        """The periodic evaluation (evaluation.*): held-out questions of the synthetic chats' task (exact answer
        after the reasoning), or a named benchmark; up to data.max_seq_len new tokens unless set."""
        cfg = self.cfg
        held_out = None
        if cfg.data.synthetic == "chat":
            records = chat_questions(HELD_OUT_QUESTIONS, cfg.data.seed + HELD_OUT_SEED_OFFSET)
            config = PromptDataConfig(paths=("synthetic:chat held-out",), template=PromptTemplate.CHAT,
                                      answer_format=AnswerFormat.RAW, shuffle=False)
            held_out = held_out_questions(PromptDataset.from_records(records, config, self.tokenizer).samples)
        return TrainingEvaluation(cfg.evaluation, self.run.run_dir, self.tokenizer,
                                  rewards=cfg.evaluation.rewards.runner_config(), max_new_tokens=cfg.data.max_seq_len,
                                  seed=cfg.seed, held_out=held_out, held_out_scorer=get_scorer(ScorerName.EXACT),
                                  say=self.run.say)

    def _check_vocab(self) -> None:
        from r1_megatron.training.step import unwrap

        vocab = unwrap(self.policy).model_config.vocab_size
        if self.tokenizer.vocab_size > vocab:
            raise ValueError(f"data.tokenizer: the tokenizer ({self.run.tokenizer_dir}) has {self.tokenizer.vocab_size} "
                             f"tokens but the model's vocabulary has {vocab}; use the model's own tokenizer")
