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
from r1_megatron.data.synthetic_chat import build_chat_tokenizer, chat_records
from r1_megatron.tokenizer import load_tokenizer
from r1_megatron.training.run import Run
from r1_megatron.training.step_stats import StepStats

from .config import SFTRunConfig
from .step import SFTStepResult, sft_loss, sft_step

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
        self.policy = run.build_policy()
        self._check_vocab()
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
            while loop.running():
                started = time.perf_counter()
                share = self.data.next_batch(t.batch_size)[run.dp_rank::run.dp_size]
                result = sft_step(self.policy, self.optimizer, self.scheduler, share, self.batching,
                                  self.tokenizer.pad_token_id, self.device)
                run.step += 1
                record = self.step_metrics(result, time.perf_counter() - started)
                if self._validation_due():
                    record["val/loss"] = self.validation_loss()
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

    def _check_vocab(self) -> None:
        from r1_megatron.training.step import unwrap

        vocab = unwrap(self.policy).model_config.vocab_size
        if self.tokenizer.vocab_size > vocab:
            raise ValueError(f"data.tokenizer: the tokenizer ({self.run.tokenizer_dir}) has {self.tokenizer.vocab_size} "
                             f"tokens but the model's vocabulary has {vocab}; use the model's own tokenizer")
