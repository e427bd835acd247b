"""Multi-process test scenarios, run by tests/parallel/launch.py under torchrun.

usage: worker.py SCENARIO WORKDIR [ARGS...]; each rank writes WORKDIR/SCENARIO-rank{R}.json.
"""
from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import torch

from megatron.core import parallel_state

from r1_megatron.models import load_hf, logits, save_hf
from r1_megatron.parallel import ParallelConfig, initialize
from r1_megatron.rollout import CacheConfig, Engine, SamplingParams
from r1_megatron.runtime import seed_everything
from r1_megatron.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from r1_megatron.training.step import unwrap
from tests.parallel import training_fixtures as tf

RANK = int(os.environ.get("RANK", 0))  # also runs as one plain process
WORLD = int(os.environ.get("WORLD_SIZE", 1))
LAYOUTS = {  # name -> initialize() kwargs
    "tp2": dict(tp=2), "tp2sp": dict(tp=2, sp=True), "ep2": dict(ep=2), "tp2ep2": dict(tp=2, ep=2, etp=1), "pp2": dict(pp=2),
    "pp2ep2": dict(pp=2, ep=2, etp=1), "dp2": dict(), "tp1": dict(),
}


def logits_scenario(workdir: Path, layouts: str) -> dict:
    """For each layout and each checkpoint in workdir/ckpts: max |logits - single-process logits| and bytes read."""
    out = {}
    for layout in layouts.split(","):
        initialize(**LAYOUTS[layout])
        seed_everything(0)
        for ckpt in sorted((workdir / "ckpts").iterdir()):
            ref = torch.load(workdir / f"{ckpt.name}.ref.pt")
            stats = {}
            model = load_hf(ckpt, reader_stats=stats)
            diff = max((logits(model, ids) - want).abs().max().item() for ids, want in zip(ref["ids"], ref["logits"]))
            out[f"{layout}/{ckpt.name}"] = {"max_diff": diff, "bytes_read": stats["bytes_read"]}
    return out


GEN_PROMPTS = [[3, 5, 7], [11, 12, 13, 14, 15, 16, 17], [9], [20, 21, 22, 23, 24]]
GEN_SHARES = {1: [[0, 1, 2, 3]], 2: [[0, 1, 2], [3]]}  # prompt indices per DP rank: unequal work on purpose


def generation_requests(dp_rank: int, dp_size: int) -> dict[str, tuple[list[int], list[SamplingParams]]]:
    """Greedy and seeded-sampling requests of this DP rank: {kind: (prompt indices, params per prompt)}."""
    share = GEN_SHARES[dp_size][dp_rank]
    return {"greedy": (share, [SamplingParams(temperature=0, max_new_tokens=3 + 2 * i) for i in share]),
            "sampled": (share, [SamplingParams(n=2, temperature=1.0, top_p=0.9, max_new_tokens=5, seed=100 + i)
                                for i in share])}


def generate_requests(model, dp_rank: int = 0, dp_size: int = 1, **engine) -> dict:
    """{kind: {"prompt/sample": token ids}} for this rank's requests, with 2 slots (continuous batching) unless
    `engine` (Engine keyword arguments) says otherwise; "preemptions": how often the engine preempted."""
    engine = Engine(model, **{"max_batch_size": 2, "max_seq_len": 24, **engine})
    out, preemptions = {}, 0
    for kind, (share, params) in generation_requests(dp_rank, dp_size).items():
        completions = engine.generate([GEN_PROMPTS[i] for i in share], params)
        preemptions += engine.stats.preemptions
        n = params[0].n
        out[kind] = {f"{share[k // n]}/{k % n}": c.token_ids for k, c in enumerate(completions)}
    return {**out, "requests": request_api_outputs(engine), "preemptions": preemptions}


def request_api_outputs(engine) -> dict:
    """The request API with top logprobs, every prompt added at once on every rank (identical requests keep
    expert-parallel ranks in lockstep), sample 1 of prompt 0 aborted after two steps: {"prompt/sample":
    {"tokens", "top_ids", "top_lp"}} (the top logprobs compared within a tolerance)."""
    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=4, seed=7, logprobs=3)
    out = {}
    with engine.generating():
        for i, prompt in enumerate(GEN_PROMPTS):
            engine.add_request(prompt, params, request_id=str(i))
        for step in itertools.count():
            if not engine.has_unfinished_requests:
                return out
            if step == 2:
                engine.abort("0", 1)
            for report in engine.step():
                for d in report.samples:
                    rec = out.setdefault(f"{report.request_id}/{d.index}", {"tokens": [], "top_ids": [], "top_lp": []})
                    rec["tokens"] += d.token_ids
                    rec["top_ids"] += [[i for i, _ in top] for top in d.top_logprobs]
                    rec["top_lp"] += [[lp for _, lp in top] for top in d.top_logprobs]


def generate_scenario(workdir: Path, runs: str) -> dict:
    """runs: comma-separated LAYOUT:CKPT[:expanded] (expanded: MLA's per-head K/V cache instead of the latent).
    Generated tokens per request, the SP flag around generation, and whether the logits after generation equal
    those before (the model is restored exactly)."""
    out = {}
    for run in runs.split(","):
        layout, ckpt, *mode = run.split(":")
        initialize(**LAYOUTS[layout])
        model = load_hf(workdir / "ckpts" / ckpt)
        probe = torch.tensor([GEN_PROMPTS[1]])
        before, sp_before = logits(model, probe), model.config.sequence_parallel
        tokens = generate_requests(model, *_dp(), cache=CacheConfig(mla_latent=mode != ["expanded"]))
        out[run] = {"tokens": tokens, "sp": [sp_before, model.config.sequence_parallel],
                    "logits_unchanged": bool(torch.equal(before, logits(model, probe)))}
    return out


# 4 slots in 8 blocks of 4 tokens and 6 tokens a step: sequences are preempted, prompts prefilled in chunks
PP_ENGINE = dict(max_batch_size=4, max_seq_len=24, cache=CacheConfig(block_size=4, num_blocks=8, max_tokens_per_step=6))


def generate_pp_scenario(workdir: Path, layout: str, ckpts: str) -> dict:
    """At `layout`, per checkpoint: the tokens of generate_requests(PP_ENGINE) (this DP rank's share), each step
    cut into 2 and 3 micro-batches; the pool size a memory fraction gives (each stage measures its own free
    memory); and the error when the stages of a pipeline pass different prompts."""
    initialize(**LAYOUTS[layout])
    out = {}
    for ckpt in ckpts.split(","):
        model = load_hf(workdir / "ckpts" / ckpt)
        out[ckpt] = {str(m): generate_requests(model, *_dp(), **PP_ENGINE, pipeline_micro_batches=m) for m in (2, 3)}
    engine = Engine(model, max_batch_size=2, max_seq_len=24, cache=CacheConfig(memory_fraction=0.5))
    out["num_blocks"] = engine.num_blocks
    out["error"] = _outcome(lambda: engine.generate([GEN_PROMPTS[RANK]]))
    return out


def grpo_scenario(workdir: Path, layout: str, steps: str, initial_model: str) -> dict:
    """A few steps of the tiny GRPO run of tests/grpo at `layout`; metrics and the HF export land in
    workdir/<layout>/."""
    from r1_megatron.grpo.trainer import GRPOTrainer
    from tests.grpo.test_trainer import tiny_run

    cfg = tiny_run(workdir / layout, initial_model, steps=int(steps))
    cfg.parallel = ParallelConfig(**LAYOUTS[layout])
    cfg.optimizer.distributed_optimizer = True  # as every GPU recipe: optimizer state sharded over the DP ranks
    GRPOTrainer(cfg).train()
    return {}


def _dp() -> tuple[int, int]:
    return parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()


def train_scenario(workdir: Path, runs: str) -> dict:
    """runs: comma-separated LAYOUT:DISTOPT. One fp32 step per run, compared with the single-process update
    (workdir/expected); the packed batch's loss and gradients at TP2, PP2 and EP2, compared with the single
    process's (workdir/packed_expected.pt); then 3 bf16 steps at TP2+EP2 whose losses must fall."""
    out = {}
    for run in runs.split(","):
        layout, distopt = run.split(":")
        initialize(**LAYOUTS[layout])
        seed_everything(0)
        trainer = tf.setup(workdir / "ckpt", distributed_optimizer=distopt == "1")
        result = tf.step(trainer, 0, *_dp())
        out[run] = {"loss": result.loss, "grad_norm": result.grad_norm,
                    "max_diff": tf.max_param_diff(trainer[0], load_hf(workdir / "expected"))}
    expected = torch.load(workdir / "packed_expected.pt")
    for layout in ("tp2", "pp2", "ep2"):  # a packed batch's loss and gradients (before any update)
        initialize(**LAYOUTS[layout])
        trainer = tf.setup(workdir / "ckpt")
        loss, _ = tf.packed_loss_and_grads(trainer, *_dp())
        out[f"packed/{layout}"] = {"loss": loss, "grad_diff": tf.max_diff_to_whole(trainer[0], expected["grads"],
                                                                                   grads=True)}
    initialize(**LAYOUTS["tp2ep2"])
    trainer = tf.setup(workdir / "ckpt", dtype=torch.bfloat16, distributed_optimizer=True)
    out["bf16_losses"] = [tf.step(trainer, 0, *_dp()).loss for _ in range(3)]
    out["nan_on_rank_1/tp2ep2_bf16"] = _nan_on_rank_1(trainer)
    initialize(**LAYOUTS["dp2"])
    out["nan_on_rank_1/dp2"] = _nan_on_rank_1(tf.setup(workdir / "ckpt"))
    return out


def _nan_on_rank_1(trainer) -> dict:
    """A step whose loss is NaN on global rank 1 only: every rank must skip the update and keep its weights."""
    from r1_megatron.training.losses import next_token_cross_entropy
    from r1_megatron.training.step import train_step

    def loss_fn(logits_BTV, batch):
        loss_sum, units = next_token_cross_entropy(logits_BTV, batch)
        return loss_sum * float("nan") if RANK == 1 else loss_sum, units

    ddp = trainer[0]
    before = {name: p.detach().clone() for name, p in unwrap(ddp).named_parameters()}
    batches = tf.micro_batches(tf.global_batch(5, unwrap(ddp).model_config.vocab_size), *_dp(), 2)
    result = train_step(*trainer, batches, loss_fn)
    return {"updated": result.updated, "nonfinite": result.nonfinite,
            "unchanged": all(torch.equal(before[name], p) for name, p in unwrap(ddp).named_parameters())}


def save_scenario(workdir: Path, layout: str) -> dict:
    """Step 0, checkpoint, then step 1 uninterrupted; logits after each step go to workdir (from rank 0)."""
    initialize(**LAYOUTS[layout])
    seed_everything(0)
    trainer = tf.setup(workdir / "ckpt", distributed_optimizer=True)
    ids = torch.load(workdir / "probe.pt")
    tf.step(trainer, 0, *_dp())
    after_0 = logits(unwrap(trainer[0]), ids)
    torch.save(tf.global_shards(trainer[0]), workdir / f"saved-params-rank{RANK}.pt")
    save_checkpoint(workdir / "run", 1, *trainer, user_state={"next_step": 1})
    tf.step(trainer, 1, *_dp())
    after_1 = logits(unwrap(trainer[0]), ids)
    if RANK == 0:
        torch.save({"after_0": after_0, "after_1": after_1}, workdir / "saved_logits.pt")
    return {}


def resume_scenario(workdir: Path, layout: str) -> dict:
    """Load the saved checkpoint at another layout: logits as saved, and the next step as the uninterrupted one."""
    initialize(**LAYOUTS[layout])
    seed_everything(1)  # a different seed: everything that matters must come from the checkpoint
    trainer = tf.setup(workdir / "ckpt", distributed_optimizer=True)
    info = load_checkpoint(latest_checkpoint(workdir / "run"), *trainer)
    want = torch.load(workdir / "saved_logits.pt")
    ids = torch.load(workdir / "probe.pt")
    saved = tf.assemble([torch.load(f) for f in sorted(workdir.glob("saved-params-rank*.pt"))])
    weights = tf.max_diff_to_whole(trainer[0], saved)
    loaded = (logits(unwrap(trainer[0]), ids) - want["after_0"]).abs().max().item()
    tf.step(trainer, info.user_state["next_step"], *_dp())
    next_step = (logits(unwrap(trainer[0]), ids) - want["after_1"]).abs().max().item()
    return {"weights_diff": weights, "logits_diff": loaded, "next_step_diff": next_step, "step": info.step}


def run_scenario(workdir: Path, total_steps: str, save_at: str, hang_after_save: str = "0") -> dict:
    """Train to `total_steps`, resuming from workdir/run if it holds a checkpoint; checkpoint after the steps in
    `save_at`. With hang_after_save=1, touch workdir/saved after the first save and keep training until killed."""
    initialize()
    seed_everything(0)
    trainer = tf.setup(workdir / "ckpt", distributed_optimizer=True)
    latest = latest_checkpoint(workdir / "run")
    start = load_checkpoint(latest, *trainer).user_state["next_step"] if latest else 0
    saves = {int(x) for x in save_at.split(",") if x}
    for step in range(start, int(total_steps) if hang_after_save == "0" else 10**9):
        tf.step(trainer, step, *_dp())
        if step + 1 in saves:
            save_checkpoint(workdir / "run", step + 1, *trainer, user_state={"next_step": step + 1})
            if hang_after_save == "1":
                (workdir / "saved").touch()
    torch.save(tf.global_shards(trainer[0]), workdir / f"final-rank{RANK}.pt")
    return {"start": start}


def _outcome(action) -> list:
    """[exception type, message] of what `action()` raised, or [None, None]."""
    try:
        action()
    except Exception as exc:
        return [type(exc).__name__, str(exc)]
    return [None, None]


def _export_failures(workdir: Path) -> dict:
    """save_hf failing on every rank alike: a NaN that only rank 1 holds (the last stage's final norm at PP2), and
    rank 0 failing to write its second shard while rank 1 still has pieces to send (TP2)."""
    from unittest import mock

    from r1_megatron.models import hf_export

    initialize(**LAYOUTS["pp2"])
    model = load_hf(workdir / "ckpts" / "dsv3")
    if RANK == 1:
        with torch.no_grad():
            model.decoder.final_layernorm.weight[0] = float("nan")
    nan = _outcome(lambda: hf_export.save_hf(model, workdir / "out" / "nan", max_shard_bytes=200_000))
    initialize(**LAYOUTS["tp2"])
    model, real_save_file, calls = load_hf(workdir / "ckpts" / "dsv3"), hf_export.save_file, []

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real_save_file(*args, **kwargs)

    with mock.patch.object(hf_export, "save_file", full_disk):
        disk = _outcome(lambda: hf_export.save_hf(model, workdir / "out" / "disk", max_shard_bytes=200_000))
    return {"nan": nan, "disk": disk}


def export_scenario(workdir: Path, runs: str, max_shard_bytes: str) -> dict:
    """runs: comma-separated LAYOUT:CKPT, each saved to workdir/out/LAYOUT-CKPT with this rank's bytes; then the
    run checkpoint workdir/run exported by `r1-megatron export --tp 2`, and the failure cases."""
    from r1_megatron.cli import main

    out = {}
    for run in runs.split(","):
        layout, ckpt = run.split(":")
        initialize(**LAYOUTS[layout])
        stats = {}
        save_hf(load_hf(workdir / "ckpts" / ckpt), workdir / "out" / f"{layout}-{ckpt}",
                max_shard_bytes=int(max_shard_bytes), writer_stats=stats)
        out[run] = stats
    out["cli"] = main(["export", "--ckpt", str(workdir / "run"), "--out", str(workdir / "out" / "cli-tp2"),
                       "--tp", "2"])
    out["errors"] = _export_failures(workdir)
    return out


def reward_scenario(workdir: Path, layouts: str) -> dict:
    """For each layout: this rank's reward scores of workdir/sequences.json, the DP share it passes (every TP/PP
    rank of a group passes the same list), keyed by sequence index, and whether sequence parallelism was on."""
    from r1_megatron.models.reward_model import load_reward_model

    sequences = json.loads((workdir / "sequences.json").read_text())
    out = {}
    for layout in layouts.split(","):
        initialize(**LAYOUTS[layout])
        dp_rank, dp_size = _dp()
        share = list(range(dp_rank, len(sequences), dp_size))
        rm = load_reward_model(workdir / "rm")
        scores = rm.score([sequences[i] for i in share], batch_size=2)
        out[layout] = {"scores": dict(zip(map(str, share), scores)), "sp": rm.model.config.sequence_parallel}
    return out


def replay_scenario(workdir: Path, layouts: str) -> dict:
    from tests.parallel.routing_worker import replay_scenario as scenario

    return scenario(workdir, layouts, LAYOUTS, _dp)


SCENARIOS = {"replay": replay_scenario, "reward": reward_scenario, "export": export_scenario, "grpo": grpo_scenario, "generate": generate_scenario, "generate_pp": generate_pp_scenario, "run": run_scenario, "logits": logits_scenario, "train": train_scenario, "save": save_scenario, "resume": resume_scenario}

if __name__ == "__main__":
    scenario, workdir = sys.argv[1], Path(sys.argv[2])
    result = SCENARIOS[scenario](workdir, *sys.argv[3:])
    (workdir / f"{scenario}-rank{RANK}.json").write_text(json.dumps(result))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
