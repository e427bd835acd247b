"""`r1-megatron sample`: rejection sampling with R1's readability filters, from an HF directory or a checkpoint.

    r1-megatron sample --model HF_DIR --data prompts.jsonl [--out samples] [sampling.k=8 keep.max_per_prompt=2 ...]
    r1-megatron sample --ckpt RUN_DIR --data prompts.jsonl parallel.tp=2   # under torchrun: every rank runs this

k samples per prompt; a sample is kept when the rewards of keep.require pass and its reasoning passes the
readability filters and de-duplication, up to keep.max_per_prompt per prompt (selection.py). OUT/samples.jsonl
gets the kept samples as SFT-ready `messages` records with their provenance, prompt by prompt as they finish (a
killed run rerun with the same command resumes: sample_file.py); OUT/summary.json and the printed table say how
many samples each filter rejected. docs/sampling.md describes every key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

from r1_megatron.atomic_file import write_text_atomically

from .config import SampleRunConfig
from .sample_file import SAMPLES_FILE, SUMMARY_FILE, SampleFile
from .selection import FILTERS, Decision, Drawn, PromptTally, Selector, total


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None, help="YAML recipe (default: the built-in r1_sample.yaml)")
    parser.add_argument("--model", default=None, metavar="HF_DIR", help="an HF model directory (model.path)")
    parser.add_argument("--ckpt", default=None, metavar="RUN_DIR",
                        help="a run directory, checkpoint root or checkpoint (model.checkpoint)")
    parser.add_argument("--data", default=None, metavar="FILE", help="a prompt file (data.paths)")
    parser.add_argument("--out", default=None, metavar="DIR", help="output directory (out; default: samples)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. sampling.k=8 filters.dedup=exact")


def main(args) -> int:
    from r1_megatron.run_config import dump_run_config, load_run_config

    flags = {"model.path": args.model, "model.checkpoint": args.ckpt, "data.paths": args.data, "out": args.out}
    overrides = [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    cfg = load_run_config(args.config, overrides + list(args.overrides), cls=SampleRunConfig)
    if args.print_config:
        print(dump_run_config(cfg), end="")
        return 0
    sample(cfg)
    return 0


@dataclasses.dataclass(frozen=True)
class SampleSummary:
    """What a finished `sample` produced: the files, and the counts of OUT/summary.json."""

    out: str
    samples: str  # OUT/samples.jsonl
    prompts: int
    drawn: int
    kept: int
    rejected: dict[str, int]  # under the first failing filter
    failed: dict[str, int]  # every sample failing the filter


@dataclasses.dataclass(frozen=True)
class Prompt:
    index: int  # position in the prompt files (the seed and the output order follow it)
    id: str  # "file:line"
    question: str
    prompt_ids: tuple[int, ...]
    reference: dict[str, Any]  # the reward registry's sample
    kind: str | None  # passed through to the records when data.kind_field is set


def sample(cfg: SampleRunConfig, *, keep_process_group: bool = False) -> SampleSummary:
    """Load the prompts (bad input fails before the model loads), open OUT (a rerun with other settings is
    refused now), then load the model, draw, filter and write every prompt not in OUT yet; write summary.json and
    print the table (rank 0). Collective under torchrun; the process group is torn down at the end unless
    keep_process_group (a pipeline runs more commands in it)."""
    import torch.distributed as dist

    from r1_megatron.evaluation.model_loading import eval_model

    if cfg.model.path is None and cfg.model.checkpoint is None:
        raise ValueError("sample: set --model HF_DIR or --ckpt RUN_DIR (model.path or model.checkpoint)")
    if cfg.data is None:
        raise ValueError("sample: set --data FILE (data.paths) or data.synthetic=arithmetic")
    model = eval_model(cfg)
    prompts = load_prompts(cfg, model.tokenizer)
    header = sample_header(cfg, model.model_id, prompts)
    out = SampleFile(cfg.out, header) if int(os.environ.get("RANK", "0")) == 0 else None
    try:
        return _sample(cfg, model, prompts, out)
    finally:  # every exit path: ranks must not wait on a peer that has left
        if out is not None:
            out.close()
        if dist.is_initialized() and not keep_process_group:
            dist.destroy_process_group()


def load_prompts(cfg: SampleRunConfig, tokenizer) -> list[Prompt]:
    """The prompt files' records in file order (the first `limit`), rendered with data.template; chat prompts end
    with "<think>\\n" (R1's responses start inside the think block)."""
    from r1_megatron.data.prompt_dataset import PromptDataset
    from r1_megatron.data.synthetic import arithmetic_problems
    from r1_megatron.data.templates import PromptTemplate
    from r1_megatron.evaluation.benchmark_suite import THINK_PREFIX
    from r1_megatron.grpo.task import prompt_data_config

    data = cfg.data
    prompt_cfg = prompt_data_config(data)
    if data.synthetic is None:
        dataset = PromptDataset(prompt_cfg, tokenizer)
    else:
        records = arithmetic_problems(data.num_synthetic, data.seed, data.arithmetic)
        dataset = PromptDataset.from_records(records, prompt_cfg, tokenizer, source=prompt_cfg.paths[0])
    if int(os.environ.get("RANK", "0")) == 0:
        for note in dataset.notes():
            print(note, flush=True)
    think = prompt_cfg.template is PromptTemplate.CHAT
    with_kind = getattr(data, "kind_field", None) is not None
    prompts = []
    for i, s in enumerate(dataset.samples[:cfg.limit]):
        ids = s.prompt_ids
        if think and not s.prompt.endswith(THINK_PREFIX):
            ids = tuple(tokenizer.encode(s.prompt + THINK_PREFIX))
        prompts.append(Prompt(i, s.source, s.question, ids, s.reward_sample(),
                              getattr(s, "kind", None) if with_kind else None))
    return prompts


def prompt_seed(seed: int, index: int) -> int:
    """The sampling seed of a prompt's k samples: a function of (seed, prompt index) only."""
    digest = hashlib.sha256(f"sample:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


# the rewards section's keys that change how scoring runs, not what it scores: a resumed run may change them
_SCORING_RUNTIME = ("num_workers", "startup_timeout_s", "chunk_size", "max_failed_steps")


def sample_header(cfg: SampleRunConfig, model_id: dict, prompts: Sequence[Prompt]) -> dict[str, Any]:
    """What decides the output (a resumed run must match it)."""
    from r1_megatron.run_config import config_to_dict

    rewards = {k: v for k, v in config_to_dict(cfg.rewards).items() if k not in _SCORING_RUNTIME}
    digest = hashlib.sha256(json.dumps([[p.id, list(p.prompt_ids), p.question, p.reference, p.kind]
                                        for p in prompts], default=str).encode()).hexdigest()[:16]
    settings = {"model": model_id, "seed": cfg.seed, "sampling": config_to_dict(cfg.sampling),
                "keep": config_to_dict(cfg.keep), "filters": config_to_dict(cfg.filters), "rewards": rewards,
                "limit": cfg.limit, "prompts": {"count": len(prompts), "digest": digest}}
    return {"settings": settings}


def _sample(cfg: SampleRunConfig, model, prompts: list[Prompt], out: SampleFile | None) -> SampleSummary:
    from r1_megatron.rewards.model_rewards import build_reward_scorer
    from r1_megatron.rewards.runner import RewardRunner
    from r1_megatron.rollout import Engine

    longest = max((len(p.prompt_ids) for p in prompts), default=1)
    max_seq_len = longest + cfg.sampling.max_new_tokens + 1
    engine = Engine(model.build(cfg), max_batch_size=cfg.engine.max_batch_size, max_seq_len=max_seq_len,
                    eos_token_ids=[model.tokenizer.eos_token_id], seed=cfg.seed,
                    cache=cfg.engine.cache_for(max_seq_len), graphs=cfg.engine.graphs)
    started = time.perf_counter()
    runner_config = cfg.rewards.runner_config()  # None: every reward is a model reward, no worker pool
    runner = RewardRunner(runner_config) if runner_config is not None else None
    try:
        scorer = build_reward_scorer(cfg.rewards, runner, tokenizer=model.tokenizer)
    except BaseException:
        if runner is not None:
            runner.close()
        raise
    with scorer:  # closes the runner too
        before = _Drawer(cfg, engine, model.tokenizer, scorer).run(prompts, out, model.model_id)
    counts = total(out.prompts) if out is not None else None
    if out is not None:
        document = {**counts, "samples": str(out.samples_path), "settings": out.header["settings"],
                    "throughput": {"wall_s": time.perf_counter() - started, "prompts": out.done - before}}
        write_text_atomically(Path(cfg.out) / SUMMARY_FILE, json.dumps(document, indent=2) + "\n")
        print("\n" + filter_table(counts, cfg) + f"\n\nsamples: {out.samples_path}\nsummary: "
              f"{Path(cfg.out) / SUMMARY_FILE}", flush=True)
    counts = _broadcast(counts)  # every rank returns the same summary
    return SampleSummary(cfg.out, str(Path(cfg.out) / SAMPLES_FILE), counts["prompts"], counts["drawn"],
                         counts["kept"], counts["rejected"], counts["failed"])


def filter_table(counts: dict[str, Any], cfg: SampleRunConfig) -> str:
    """Markdown: per filter (in order) its setting, the samples it rejected first and the samples failing it."""
    f = cfg.filters
    settings = {"rewards": ", ".join(f"{k} >= {v:g}" for k, v in cfg.keep.require.items()) or "none",
                "language": f"{f.language.target} >= {f.language.min_consistency}"
                if f.language.min_consistency is not None else "off",
                "long_paragraph": f"<= {f.max_paragraph_chars} chars" if f.max_paragraph_chars else "off",
                "code_block": f.code_blocks.value, "duplicate": f.dedup.value,
                "max_per_prompt": str(cfg.keep.max_per_prompt) if cfg.keep.max_per_prompt else "off"}
    rows = ["| filter | setting | rejected | failing |", "|---|---|---:|---:|"]
    rows += [f"| {name} | {settings[name]} | {counts['rejected'][name]} | {counts['failed'][name]} |"
             for name in FILTERS]
    rows.append(f"| **kept** | {counts['prompts']} prompts, {counts['drawn']} drawn | | {counts['kept']} |")
    return "\n".join(rows)


class _Drawer:
    """Draws the prompts in rounds: every data-parallel rank generates and scores its share of a round, the
    shares are gathered, and rank 0 selects and writes the round's prompts in prompt order."""

    def __init__(self, cfg: SampleRunConfig, engine, tokenizer, scorer):
        import torch.distributed as dist
        from megatron.core import parallel_state

        self.cfg, self.engine, self.tokenizer, self.scorer = cfg, engine, tokenizer, scorer
        self.rank = dist.get_rank()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.dp_group = parallel_state.get_data_parallel_group_gloo()

    def run(self, prompts: list[Prompt], out: SampleFile | None, model_id: dict) -> int:
        """Draw every prompt after out.done (rank 0's; None elsewhere); returns the prompts done before."""
        from r1_megatron.training.progress import Progress

        done = _broadcast(out.done if out is not None else None)
        selector = Selector(self.cfg.keep, self.cfg.filters, _kept_texts(out.records)) if out is not None else None
        k = self.cfg.sampling.k
        per_round = self.cfg.engine.questions_per_round or self.dp_size * max(
            1, math.ceil(2 * self.cfg.engine.max_batch_size / k))
        progress = Progress(len(prompts), initial_step=done, enabled=self.cfg.progress and self.rank == 0,
                            keys=("kept",), metric_names={"kept": "kept"}, unit="prompt")
        with progress:
            for start in range(done, len(prompts), per_round):
                round_ = prompts[start:start + per_round]
                drawn = self._draw(round_)
                if out is not None:
                    out.append([_finished(p, selector.select(p.question, drawn[p.index]), self.cfg, model_id)
                                for p in round_])
                    progress.update(out.done, {"kept": len(out.records)})
        return done

    def _draw(self, prompts: list[Prompt]) -> dict[int, list[Drawn]]:
        """Every prompt's k scored samples (prompt index -> samples in order), from all ranks."""
        import torch.distributed as dist

        from r1_megatron.scored_generation import generate_and_score

        share = prompts[self.dp_rank::self.dp_size]
        params = [self.cfg.sampling.params(prompt_seed(self.cfg.seed, p.index)) for p in share]
        batch = generate_and_score(self.engine, self.tokenizer, [p.prompt_ids for p in share],
                                   [p.reference for p in share], params, self.scorer)
        # only the rewards of the sample's kind (rewards.kinds) scored it: keep.require tests those
        applied = {name: batch.scored.applied(name) for name in batch.scored.per_reward}
        mine = [(share[s.prompt_index].index,
                 Drawn(s.sample_index, s.text, {n: v for n, v in s.rewards.items() if applied[n][i]}, s.reward,
                       s.finish_reason.value, s.failure)) for i, s in enumerate(batch.samples)]
        gathered = [mine]
        if self.dp_size > 1:
            gathered = [None] * self.dp_size
            dist.all_gather_object(gathered, mine, group=self.dp_group)
        drawn: dict[int, list[Drawn]] = {p.index: [] for p in prompts}
        for index, d in sorted((item for part in gathered for item in part), key=lambda x: (x[0], x[1].sample)):
            drawn[index].append(d)
        return drawn


def _broadcast(value):
    import torch.distributed as dist

    box = [value]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def _kept_texts(records: list[dict]) -> list[tuple[str, str, str]]:
    """(question, reasoning, summary) of kept records, for the de-duplication of a resumed run."""
    return [(r["messages"][0]["content"], r["messages"][1]["reasoning_content"], r["messages"][1]["content"])
            for r in records]


def _finished(prompt: Prompt, decisions: list[Decision], cfg: SampleRunConfig, model_id: dict
              ) -> tuple[dict, list[dict]]:
    """(the prompt's ledger line, its kept records)."""
    line = {"prompt": prompt.index, **PromptTally.of(decisions).to_json()}
    return line, [sample_record(prompt, d, cfg, model_id) for d in decisions if d.kept]


def sample_record(prompt: Prompt, decision: Decision, cfg: SampleRunConfig, model_id: dict) -> dict[str, Any]:
    """One line of samples.jsonl: the `messages` record `train sft` reads, and where it came from."""
    d = decision.drawn
    record: dict[str, Any] = {"messages": [
        {"role": "user", "content": prompt.question},
        {"role": "assistant", "reasoning_content": decision.reasoning, "content": decision.summary}]}
    if prompt.kind is not None:
        record["kind"] = prompt.kind
    record["provenance"] = {
        "model": model_id.get("hf", model_id.get("checkpoint")), "step": model_id.get("step"),
        "prompt_id": prompt.id, "prompt_index": prompt.index, "sample": d.sample,
        "seed": prompt_seed(cfg.seed, prompt.index), "run_seed": cfg.seed, "finish_reason": d.finish_reason,
        "rewards": d.rewards, "reward": d.reward, "filters": decision.filters}
    return record
