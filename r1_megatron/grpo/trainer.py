"""The GRPO trainer (DeepSeekMath §4.1, DeepSeek-R1-Zero): `GRPOTrainer(cfg).train()`.

Each step: sample prompts → generate G completions each with the engine on the policy's own weights → score them
with the rule and model rewards (rewards/model_rewards.py) → group-normalised advantages (fused kernel) →
old-policy and reference log-probabilities → μ epochs of mini-batch optimizer steps on the clipped-ratio + KL
loss (fused kernel, from vocab-parallel logits) → log, checkpoint. Data parallelism splits the prompts; every rank of a tensor/expert-parallel group generates and
trains the same rows together, and so does every stage of a pipeline (the loss statistics come from its last).
"""
from __future__ import annotations

import contextlib
import time

import torch
from megatron.core import parallel_state

from r1_megatron.evaluation.scorers import scorer_for_reward
from r1_megatron.evaluation.training_eval import TrainingEvaluation, held_out_questions
from r1_megatron.kernels import group_advantages
from r1_megatron.rewards.model_rewards import build_reward_scorer
from r1_megatron.rewards.runner import RewardRunner
from r1_megatron.rollout import Engine, FinishReason, SamplingParams
from r1_megatron.runtime import world_max
from r1_megatron.scored_generation import ScoredBatch, generate_and_score
from r1_megatron.training.micro_batch import MicroBatch
from r1_megatron.training.offload import HostOffload
from r1_megatron.training.packing import extend_to
from r1_megatron.training.run import Run
from r1_megatron.training.step import train_step, unwrap
from r1_megatron.training.step_stats import StepStats

from .config import GRPORunConfig
from .logprob_pass import forward_logprobs
from .loss_health import LossHealth
from .policy_loss import policy_loss_fn
from .reference import ReferenceModel
from .reward_health import RewardHealth
from .router_rl import RouterHealth, apply_router_settings, set_routing_mode
from .rollout_batch import (RolloutSample, empty_micro_batch, micro_batches, mini_batch_parts, packed_micro_batches,
                            split_parts)
from .task import build_task, sample_seed
from .warm_start import warm_start


# what the loss function records: known on the last pipeline stage only (mismatch/max last: a maximum)
LOSS_STATS = ("mismatch/mean", "loss/kl", "loss/clip_frac", "loss/entropy", "mismatch/max")


class WarmStartSummary:
    """What the warm start reported (step 1's metrics show it, resumed or not); checkpointed with the run."""

    def __init__(self):
        self.metrics: dict = {}

    def state_dict(self) -> dict:
        return self.metrics

    def load_state_dict(self, state: dict) -> None:
        self.metrics = dict(state)


class GRPOTrainer:
    def __init__(self, cfg: GRPORunConfig, *, resume: bool = False):
        self.cfg = cfg
        self.total_steps = cfg.steps
        self.run = run = Run(cfg, resume=resume, command="train grpo")
        self.dp_rank, self.dp_size, self.dp_group = run.dp_rank, run.dp_size, run.dp_group
        if cfg.rollout.prompts_per_step % self.dp_size:
            raise ValueError(f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} must be divisible by the "
                             f"data-parallel size {self.dp_size}")
        self.task = build_task(cfg, say=run.say)
        run.tokenizer_dir = self.task.tokenizer_dir
        self.reward_health = RewardHealth(cfg.rewards.max_failed_steps)
        self.loss_health = LossHealth(cfg.algorithm.health_clip_fraction_max, cfg.algorithm.health_mismatch_max,
                                      run.say)
        accuracy = scorer_for_reward(cfg.rewards.accuracy) if cfg.rewards.accuracy else None
        self.extract_answer = accuracy.extract if accuracy else None  # the answer shown in samples.jsonl
        self.evaluation = self._training_evaluation() if cfg.evaluation.enabled else None
        self.ddp = run.build_policy()
        self.engine = Engine(self.ddp, max_batch_size=cfg.rollout.max_batch_size, max_seq_len=self._max_seq_len(),
                             eos_token_ids=[self.task.tokenizer.eos_token_id], seed=cfg.seed,
                             cache=cfg.rollout.cache, graphs=cfg.rollout.graphs,
                             pipeline_micro_batches=cfg.rollout.pipeline_micro_batches,
                             record_routing=cfg.router.replay.records and unwrap(self.ddp).model_config.has_moe)
        self.step_samples: list[dict] = []  # the completions samples.jsonl shows of the current step
        self.warm_start = WarmStartSummary()
        if not run.resumed and cfg.warm_start.max_steps:
            self.warm_start.metrics = warm_start(cfg, run, self.engine, self.task)
        apply_router_settings(self.ddp, cfg.router)  # RL from here on: before the reference copies the config
        self.router_health = RouterHealth(self.ddp, cfg.router.replay)
        self.optimizer, self.scheduler = run.build_optimizer(total_steps=cfg.steps)
        self.reference = ReferenceModel(self.ddp, on_host=cfg.algorithm.ref_on_host) \
            if cfg.algorithm.uses_reference else None
        if self.reference is not None:
            set_routing_mode(self.reference.model, cfg.router.replay)
        run.track("data", self.task.dataset)
        run.track("warm_start", self.warm_start)
        if self.reference is not None:
            run.track_model("reference", self.reference.model)
        if not run.restore() and self.warm_start.metrics:
            run.save()  # step 0: a run killed later resumes after its warm start instead of redoing it

    @property
    def step(self) -> int:
        return self.run.step

    # ------------------------------------------------------------------------------------------- the loop

    def train(self):
        cfg, run = self.cfg, self.run
        rewards = self.reward_scorer()
        with rewards, run.loop(cfg.steps, checks=(self.reward_health.end_step,)) as loop:
            if run.step == 0 and self._evaluation_due():
                loop.log_before_first_step(self.evaluation.evaluate(0, self.engine))
            while loop.running():
                t_step = time.perf_counter()
                stats = StepStats()
                self.router_health.begin_step()
                samples = self.rollout(rewards, stats)
                batches = self.training_batches(samples, stats)
                self.update(batches, stats)
                run.step += 1
                self.maybe_refresh_reference()
                stats.add("time/step", time.perf_counter() - t_step)
                metrics = self.step_metrics(stats)
                if self._evaluation_due():
                    metrics |= self.evaluation.evaluate(self.step, self.engine)
                loop.end_step(metrics, samples=self.step_samples)
        return run.finish(cfg.steps)

    def reward_scorer(self):
        """The rule rewards' worker pool (none when every reward is a model reward) and the model rewards, loaded
        on this rank at the run's layout (collective)."""
        runner_config = self.cfg.rewards.runner_config()
        runner = RewardRunner(runner_config) if runner_config is not None else None
        try:
            return build_reward_scorer(self.cfg.rewards, runner, tokenizer=self.task.tokenizer)
        except BaseException:  # a model reward that fails to load: the workers go now, not at exit
            if runner is not None:
                runner.close()
            raise

    def rollout(self, rewards, stats: StepStats) -> list[RolloutSample]:
        """Generate and score this rank's share of the step's prompts; with dynamic sampling keep only groups
        whose rewards differ, drawing more prompts for up to `dynamic_sampling_rounds` extra rounds."""
        cfg, G = self.cfg, self.cfg.rollout.group_size
        want = cfg.rollout.prompts_per_step // self.dp_size
        kept: list[RolloutSample] = []
        rounds = 1 + (cfg.algorithm.dynamic_sampling_rounds if cfg.algorithm.dynamic_sampling else 0)
        for round_ in range(rounds):
            # collective: every rank draws the round's prompts (same data position) and enters generate (expert-
            # parallel lockstep), a rank that already has enough groups with no prompts of its own
            if not world_max(int(len(kept) < want * G)):
                break
            prompts = self.task.dataset.next_batch(cfg.rollout.prompts_per_step)
            share = split_parts(prompts, self.dp_size)[self.dp_rank] if len(kept) < want * G else []
            groups = self._scored_groups(share, self.dp_rank * (len(prompts) // self.dp_size), round_, rewards,
                                         stats)
            if cfg.algorithm.dynamic_sampling:
                groups = [g for g in groups if len({s.reward for s in g}) > 1]
            kept.extend(s for g in groups[:want - len(kept) // G] for s in g)
        stats.add("rollout/groups_kept", len(kept) / G / want)
        self.router_health.add_rollout([s.routing for s in kept])
        return kept

    def _scored_groups(self, prompts, first_index: int, round_: int, rewards, stats) -> list[list[RolloutSample]]:
        """G scored samples of each prompt (scored_generation.generate_and_score) with their group advantages."""
        cfg, G = self.cfg, self.cfg.rollout.group_size
        r = cfg.rollout
        params = [SamplingParams(n=G, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                 max_new_tokens=r.max_new_tokens, seed=sample_seed(cfg.seed, self.step, first_index + i,
                                                                                   round_))
                  for i in range(len(prompts))]
        offload = HostOffload(self.ddp, self.optimizer) if r.offload_training_state else None
        batch = generate_and_score(self.engine, self.task.tokenizer, [p.prompt_ids for p in prompts],
                                   [p.reward_sample() for p in prompts], params, rewards, extract=self.extract_answer,
                                   offload=offload)
        if not prompts:
            return []
        rewards_B = torch.tensor(batch.scored.total, dtype=torch.float32, device=self.engine.device)  # GPU: Triton
        adv_B = group_advantages(rewards_B, G, std=cfg.algorithm.advantage_std, eps=cfg.algorithm.advantage_eps)
        self._rollout_stats(stats, batch, rewards_B, adv_B)
        if round_ == 0:
            self.step_samples = self._shown_samples(prompts, batch, adv_B)
        samples = [RolloutSample(list(prompts[s.prompt_index].prompt_ids), s.token_ids, s.logprobs, float(rw),
                                 float(a), s.finish_reason is FinishReason.LENGTH, first_index + s.prompt_index,
                                 c.routing)
                   for s, c, rw, a in zip(batch.samples, batch.completions, rewards_B.tolist(), adv_B.tolist())]
        return [samples[i:i + G] for i in range(0, len(samples), G)]

    def training_batches(self, samples: list[RolloutSample], stats: StepStats) -> list[list[MicroBatch]]:
        """Mini-batches of micro-batches, the same count and [B, T] shape on every rank; old-policy and reference
        log-probabilities filled in."""
        cfg = self.cfg
        parts = mini_batch_parts(samples, cfg.algorithm.mini_batches)
        minis = self._packed(parts) if cfg.algorithm.max_tokens_per_micro_batch else self._padded(parts)
        device = self.engine.device
        minis = [[mb.to(device) for mb in m] for m in minis]
        flat = [mb for m in minis for mb in m]
        t0 = time.perf_counter()
        if cfg.algorithm.recompute_old_logprobs:
            with self.router_health.measuring():  # the first forward on the rollout's weights
                recomputed = forward_logprobs(self.ddp, flat, cfg.rollout.temperature)
            for mb, logp_BT in zip(flat, recomputed):
                self._mismatch(stats, logp_BT, mb)
                mb.extras["old_logprobs"] = logp_BT
        if self.reference is not None:
            for mb, ref_BT in zip(flat, self.reference.logprobs(flat, cfg.rollout.temperature)):
                mb.extras["ref_logprobs"] = ref_BT
        stats.add("time/logprobs", time.perf_counter() - t0)
        return minis

    def _padded(self, parts: list[list[RolloutSample]]) -> list[list[MicroBatch]]:
        a = self.cfg.algorithm
        seq_len = world_max(max((len(s.prompt_ids) + len(s.completion_ids) - 1 for p in parts for s in p),
                                default=1))
        minis = [micro_batches(part, a.micro_batch_size, seq_len, pad_id=self.task.tokenizer.pad_token_id,
                               mask_truncated=a.mask_truncated) for part in parts]
        count = world_max(max(len(m) for m in minis))
        for m in minis:  # ranks with fewer sequences (dynamic sampling) run empty micro-batches
            m.extend(empty_micro_batch(a.micro_batch_size, seq_len) for _ in range(count - len(m)))
        return minis

    def _packed(self, parts: list[list[RolloutSample]]) -> list[list[MicroBatch]]:
        a, pad_id = self.cfg.algorithm, self.task.tokenizer.pad_token_id
        minis = [packed_micro_batches(part, a.micro_batch_size, a.max_tokens_per_micro_batch, pad_id=pad_id,
                                      mask_truncated=a.mask_truncated, loss_agg=a.loss_config(1).loss_agg,
                                      norm_length=self.cfg.rollout.max_new_tokens) for part in parts]
        count = world_max(max(len(m) for m in minis))  # equal counts on every rank (expert-parallel all-to-alls)
        return [extend_to(m, count, pad_id) for m in minis]

    def update(self, minis: list[list[MicroBatch]], stats: StepStats) -> None:
        """μ epochs over the mini-batches, one optimizer step each, through Megatron's schedule."""
        t0 = time.perf_counter()
        for epoch in range(self.cfg.algorithm.epochs):
            for i, mini in enumerate(minis):
                on_policy = epoch == 0 and i == 0 and not self.cfg.algorithm.recompute_old_logprobs
                with self.router_health.measuring() if on_policy else contextlib.nullcontext():
                    result = train_step(self.ddp, self.optimizer, self.scheduler, mini,
                                        self._loss_fn(stats, on_policy))
                self.run.guard.record(result)  # a non-finite update is skipped, counted, and may stop the run
                stats.add("loss/total", result.loss)  # clipped surrogate + β·KL, as optimised
                stats.add("grad_norm", result.grad_norm)
                stats.add("lr", result.lr)
        stats.add("time/train", time.perf_counter() - t0)

    # ------------------------------------------------------------------------------------------- the loss

    def _loss_fn(self, stats: StepStats, on_policy: bool):
        """The GRPO loss of each micro-batch (policy_loss.py), logging the kernel's KL, clip fraction and entropy
        (means over the loss tokens, weighted by the loss mask) and, on policy, the train/rollout mismatch."""
        loss_cfg = self.cfg.algorithm.loss_config(norm_length=self.cfg.rollout.max_new_tokens)

        def record(batch: MicroBatch, out: dict) -> None:
            tokens = float((batch.loss_mask > 0).sum())
            for name in ("kl", "clip_frac", "entropy"):
                stats.add(f"loss/{name}", float(out[name]), tokens)
            if on_policy:
                self._mismatch(stats, out["logp"], batch)

        return policy_loss_fn(loss_cfg, self.cfg.rollout.temperature, record)

    def _mismatch(self, stats: StepStats, train_logp_BT, batch) -> None:
        """|train-forward logprob − rollout logprob| over loss tokens (on-policy, same weights: ~1e-6 in fp32)."""
        mask_BT = batch.loss_mask.bool().cpu()
        old_BT = batch.extras["old_logprobs"].cpu()
        diff = (train_logp_BT.detach().float().cpu()[:, :mask_BT.shape[1]] - old_BT)[mask_BT].abs()
        stats.add("mismatch/mean", float(diff.sum()) / max(diff.numel(), 1), diff.numel())
        stats.max("mismatch/max", float(diff.max()) if diff.numel() else 0.0)

    # ---------------------------------------------------------------------------------------- bookkeeping

    def _rollout_stats(self, stats, batch: ScoredBatch, rewards_B, adv_B) -> None:
        G, scored = self.cfg.rollout.group_size, batch.scored
        lengths = [len(s.token_ids) for s in batch.samples]
        stats.add_many("reward/total_mean", scored.total)
        self.reward_health.record(stats, scored)  # reward/errors, reward/timeouts, reward/crashes
        for name, values in scored.per_reward.items():  # a reward's mean over the samples of its kinds
            for v, applied in zip(values, scored.applied(name)):
                stats.add(f"reward/{name}_mean", v, float(applied))
        for name, count in scored.counts.items():
            stats.total(f"reward/{name}", count)
        for role, name in (("accuracy", self.cfg.rewards.accuracy), ("format_rate", self.cfg.rewards.format)):
            if name is not None:
                for v, applied in zip(scored.per_reward[name], scored.applied(name)):
                    stats.add(role, float(v >= 1.0), float(applied))
        stats.add_many("response_length/mean", lengths)
        stats.max("response_length/max", float(max(lengths)))
        stats.add_many("response_length/truncated_frac", [not s.stopped for s in batch.samples])
        adv_B, rewards_B = adv_B.cpu(), rewards_B.cpu()
        stats.add_many("advantage/mean", adv_B.tolist())
        stats.add_many("advantage/square_mean", adv_B.square().tolist())
        stats.add_many("advantage/zero_group_frac", (rewards_B.view(-1, G).std(dim=1, unbiased=False) == 0).tolist())
        stats.add("time/generate", batch.generate_s)
        stats.add("time/reward", batch.reward_s)
        stats.total("rollout/tokens", float(sum(lengths)))

    def _shown_samples(self, prompts, batch: ScoredBatch, adv_B) -> list[dict]:
        """What samples.jsonl shows of this rank's rollout: the first completion of each of the first prompts."""
        G, shown = self.cfg.rollout.group_size, []
        for i in range(0, min(len(batch.samples), G * self.cfg.logging.samples_per_step), G):
            s = batch.samples[i]
            shown.append({"prompt": prompts[s.prompt_index].prompt, "completion": s.text, "rewards": s.rewards,
                          "reward": s.reward, "advantage": float(adv_B[i]), "answer": s.answer,
                          "finish_reason": s.finish_reason.value, "tokens": len(s.token_ids)})
        return shown

    def step_metrics(self, stats: StepStats) -> dict[str, float]:
        for name in LOSS_STATS[:-1]:
            stats.add(name, 0.0, 0.0)  # same keys on every rank
        stats.max("mismatch/max", 0.0)
        out = stats.reduce(self.dp_group)
        out.update(from_last_stage({name: out[name] for name in LOSS_STATS}, self.engine.device))
        out.update(self.loss_health.check(self.step, out))  # health/clip_fraction_warning, health/mismatch_warning
        out["throughput/tokens_per_s"] = out.pop("rollout/tokens") / max(out["time/step"], 1e-9)  # generated
        out["advantage/std"] = max(out.pop("advantage/square_mean") - out["advantage/mean"] ** 2, 0.0) ** 0.5
        out.update(self.warm_start.metrics if self.step == 1 else {})
        out.update(self.router_health.metrics(self.dp_group))
        return out

    def _evaluation_due(self) -> bool:
        return self.evaluation is not None and self.evaluation.due(self.step, self.total_steps)

    def maybe_refresh_reference(self) -> None:
        k = self.cfg.algorithm.ref_refresh_steps
        if self.reference is not None and k and self.step % k == 0:
            self.reference.refresh_from(self.ddp)

    # ------------------------------------------------------------------------------------------- set-up

    def _max_seq_len(self) -> int:
        longest = max(len(s.prompt_ids) for s in self.task.dataset.samples)
        return max(longest + self.cfg.rollout.max_new_tokens + 1,
                   self.evaluation.max_seq_len if self.evaluation is not None else 0)

    def _training_evaluation(self) -> TrainingEvaluation:
        """The periodic evaluation (evaluation.*): the task's held-out examples, scored by its own scorer, or a
        named benchmark; the rollout's length unless evaluation.sampling.max_new_tokens is set."""
        cfg, run = self.cfg, self.run
        return TrainingEvaluation(cfg.evaluation, run.run_dir, self.task.tokenizer,
                                  rewards=cfg.evaluation.rewards.runner_config(),
                                  max_new_tokens=cfg.rollout.max_new_tokens,
                                  seed=cfg.seed, held_out=held_out_questions(self.task.held_out),
                                  held_out_scorer=scorer_for_reward(self.task.scorer), say=run.say)


def from_last_stage(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The last pipeline stage's `values` on every stage (the same dict without pipeline parallelism)."""
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return values
    values_K = torch.tensor(list(values.values()), dtype=torch.float64, device=device)  # NCCL: a device tensor
    torch.distributed.broadcast(values_K, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                                group=parallel_state.get_pipeline_model_parallel_group())
    return dict(zip(values, values_K.tolist()))

