"""SFT training speed of r1_megatron's `sft_step` against transformers' `Trainer` and TRL's `SFTTrainer`, on the
same checkpoint, conversations and global batch; and packing efficiency on a length-skewed set.

    python benchmarks/bench_sft.py                      # CPU: tiny + small random Qwen2, fp32 (a few minutes)
                                                        #   -> benchmarks/results/sft_cpu.json and sft_cpu.png
    python benchmarks/bench_sft.py --smoke --out X.json # CI: tiny only, 1 warmup + 1 timed step (seconds)
    python benchmarks/bench_sft.py --device cuda --hf-dir DIR --dtype bf16 --max-seq-len 4096 \\
        --length-median 600 --global-batch 64 --micro-batch 8 --budget 8192   # a real checkpoint on a GPU

Method.
- Same weights: one HF checkpoint directory (random weights from transformers' own init, written by
  save_pretrained, with a character-level ChatML tokenizer; or --hf-dir with its own tokenizer), loaded by
  `r1_megatron.models.load_hf` on our side and `AutoModelForCausalLM.from_pretrained` on the peers'.
- Same conversations: --examples generated chats (a user question, an assistant answer whose length in tokens is
  drawn from a log-normal: most short, a few long, capped so a chat fits --max-seq-len), rendered once by our SFT
  data pipeline (`load_sft_datasets`, ChatML template): tokens and a loss mask that is 1 on assistant tokens
  (+ their end-of-turn) only. The peers get exactly these token ids, with labels = the token where the mask
  trains it and -100 elsewhere. Step k trains on examples [k·G, (k+1)·G) in every same-data configuration
  (G = --global-batch; transformers' sequential sampler), and every worker reports a hash of its first step's
  sequences, so "same data" is checked, not assumed.
- Same optimisation: fp32 (or --dtype), AdamW (lr --lr, betas (0.9, 0.95), eps 1e-8, weight decay 0), constant LR,
  no warmup, gradient clipping at 1.0, no gradient checkpointing (TRL's default is on; turned off here), loss =
  mean cross-entropy over the global batch's trained tokens (both sides normalise over the whole global batch,
  whatever the micro-batching).
- Configurations: ours_pack = `sft_step` with `Batching(micro_batch_size=1, max_tokens_per_micro_batch=--budget)`
  (first-fit-decreasing rows of --budget positions per global batch); ours_pad = `Batching(micro_batch_size=
  --micro-batch)` (one sequence per row, every micro-batch padded to the step's longest); trainer_pad = `Trainer`
  with DataCollatorForSeq2Seq (padding per micro-batch of --micro-batch rows, gradient accumulation G/--micro-batch);
  trl_pad = `SFTTrainer` likewise (its own collator); trl_pack = `SFTTrainer(packing=True)` (TRL's default BFD
  packing over the whole dataset into rows of --budget tokens, padding-free: one flattened row per micro-batch, its
  position_ids restart per sequence, which transformers turns into a block-diagonal mask for SDPA). TRL's packing
  fills rows across global-batch boundaries, so trl_pack's steps hold different examples: its step = as many
  packed rows as ours_pack makes for the first global batch (about the same tokens per step), and its loss is
  checked against its own reference instead. torch_loop (only when neither TRL nor accelerate is installed, or
  asked for) = a plain PyTorch loop on the HF model with the same padding as trainer_pad.
- Isolation and timing: every configuration runs in its own subprocess (fresh interpreter, --threads torch threads,
  OMP/MKL likewise), one at a time, --rounds times (round order reversed every other round, so a slow spell of a
  shared machine does not land on one side only); the first --warmup steps of each run are not timed; a step's time
  is wall time from the end of the previous step to the end of this one (ours: around `sft_step`, which builds its
  micro-batches; peers: between Trainer's on_step_end callbacks, so collation and the Trainer loop are included),
  CUDA-synchronised on GPU. Every round repeats the same steps from the same weights.
- Figures: real tokens of a step = Σ (len(tokens) − 1) over its sequences (the positions that predict a label; the
  same count on both sides). tokens_per_s = median over the timed steps of step tokens / step seconds, the steps
  of all rounds (tokens_per_s_total = all timed tokens / all timed seconds; tokens_per_s_best_step = the fastest
  step's rate; tokens_per_s_by_round = each round's median). ratios["ours_X/peer_Y"] = ours tokens_per_s over the
  peer's. computed tokens = positions the forward computed, padding included; computed_efficiency = real / computed;
  computed_tokens_per_s = median of step computed tokens / step seconds.
- Loss check: the first step's loss of every same-data configuration is compared with `reference_loss`, the HF
  model at the initial weights run on each of the first step's sequences alone (no padding, no packing), summed
  CE over trained tokens / their count; and with each other. trl_pack is compared with the same reference built
  from its own first step. `loss_check.ok` = every |difference| <= --loss-tol and the same-data hashes agree. Later
  steps' losses are reported too (they test that the optimizer updates agree).
- Packing efficiency (no model): over all --examples in global batches of G, real / computed positions for our
  packer at each of --budgets, for padding to the step's longest (ours, packing off), for padding per micro-batch
  of --micro-batch rows (what transformers' collators do) and for first-fit-decreasing over the whole set at once
  (packing across steps, as TRL's whole-dataset BFD does; its padding-free rows then compute no padding at all).

Prints a table and writes the JSON (+ a PNG unless --no-plot): {"benchmark", "env", "settings", "data", "sizes",
"packing_efficiency", "skipped", "errors"}; exits 1 when a configuration failed or the loss check failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import cpu_name, set_threads, write_payload  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]

# random Qwen2 sizes (vocab 128 holds the character-level chat tokenizer's 100 tokens)
SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2),
}
COMMON_QWEN2 = dict(vocab_size=128, max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False,
                    rope_parameters=dict(rope_type="default", rope_theta=10000.0),
                    # larger than transformers' 0.02 so that the initial loss depends on the exact tokens and labels
                    # (logits near 0 would give ~ln(vocab) for any data, and the loss check could not tell)
                    initializer_range=0.1)
OURS = ("ours_pack", "ours_pad")
PEERS = ("trainer_pad", "trl_pad", "trl_pack", "torch_loop")
SAME_DATA = ("ours_pack", "ours_pad", "trainer_pad", "trl_pad", "torch_loop")
CPU_DEFAULTS = dict(sizes=["tiny", "small"], examples=512, global_batch=16, micro_batch=4, max_seq_len=512,
                    budget=512, budgets=[512, 1024, 2048, 4096], warmup=2, steps=6, rounds=2)
SMOKE = dict(sizes=["tiny"], examples=64, global_batch=8, micro_batch=4, max_seq_len=256, budget=256,
             budgets=[256, 512], warmup=1, steps=1, rounds=1, length_median=24.0)
# first-step loss tolerance: fp32 on CPU agrees to ~1e-6 here; GPU kernels (TF32-free fp32, bf16) differ more
LOSS_TOL = {("fp32", "cpu"): 1e-5, ("fp32", "cuda"): 1e-4, ("bf16", "cpu"): 5e-2, ("bf16", "cuda"): 5e-2}
THREADS_NOTE = ("1 torch thread per worker by default on CPU: on a machine whose cores other processes also use, a "
                "multi-threaded op waits at its barrier for a descheduled thread, and single steps then take several "
                "times longer (measured on the 2 shared cores this benchmark was written on, where the tiny model was "
                "no faster with 2 threads than with 1)")


# ----------------------------------------------------------------------------------------------- arguments


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where every side trains (default cpu; this script has only been run on CPU)")
    p.add_argument("--smoke", action="store_true", help="CI: tiny size, few examples, 1 warmup + 1 timed step")
    p.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=None, help="random Qwen2 sizes to run")
    p.add_argument("--hf-dir", type=Path, default=None,
                   help="benchmark this HF checkpoint (and its tokenizer) instead of the random sizes")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="fp32; bf16 = ours: bf16 weights + fp32 main weights, peers: bf16 autocast (Trainer bf16)")
    p.add_argument("--configs", default=None,
                   help=f"comma-separated subset of {','.join(OURS + PEERS)} (default: ours + every peer installed)")
    p.add_argument("--examples", type=int, default=None, help="conversations generated (efficiency uses all)")
    p.add_argument("--global-batch", type=int, default=None, help="examples per optimizer step")
    p.add_argument("--micro-batch", type=int, default=None, help="rows per micro-batch when padding")
    p.add_argument("--max-seq-len", type=int, default=None, help="longest conversation in tokens")
    p.add_argument("--budget", type=int, default=None, help="packed row length (tokens) in the timed runs")
    p.add_argument("--budgets", type=int, nargs="+", default=None, help="packed row lengths of the efficiency table")
    p.add_argument("--length-median", type=float, default=40.0, help="median assistant length in tokens")
    p.add_argument("--length-sigma", type=float, default=1.0, help="log-normal sigma of the assistant length")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (>= 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (median reported)")
    p.add_argument("--rounds", type=int, default=None,
                   help="worker runs per configuration, in alternating order (timed steps of all rounds pooled)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker (default: 1 on CPU, see THREADS_NOTE; all CPUs on GPU)")
    p.add_argument("--seed", type=int, default=0, help="weights, conversations")
    p.add_argument("--loss-tol", type=float, default=None,
                   help="max |first-step loss difference| (default: LOSS_TOL, 1e-5 for fp32 on CPU)")
    p.add_argument("--worker-timeout", type=int, default=900, help="seconds one configuration may take")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/sft_<device>.json)")
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: the JSON path with .png)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        return args
    defaults = SMOKE if args.smoke else CPU_DEFAULTS
    for name, value in defaults.items():
        if name == "length_median":
            if args.length_median == p.get_default("length_median"):
                args.length_median = value
        elif getattr(args, name) is None:
            setattr(args, name, value)
    if args.hf_dir is not None:
        args.sizes = [args.hf_dir.name]
    if args.loss_tol is None:
        args.loss_tol = LOSS_TOL[args.dtype, args.device]
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else os.cpu_count() or 1
    for name, low in (("examples", 1), ("global_batch", 1), ("micro_batch", 1), ("max_seq_len", 8), ("warmup", 1),
                      ("steps", 1), ("rounds", 1), ("threads", 1)):
        if getattr(args, name) < low:
            p.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.global_batch % args.micro_batch:
        p.error(f"--global-batch {args.global_batch} must be a multiple of --micro-batch {args.micro_batch}")
    if (args.warmup + args.steps) * args.global_batch > args.examples:
        p.error(f"(--warmup + --steps) x --global-batch = {(args.warmup + args.steps) * args.global_batch} examples "
                f"are needed, --examples is {args.examples}")
    if min(args.budgets + [args.budget]) < args.max_seq_len:
        p.error(f"--budget/--budgets must be >= --max-seq-len {args.max_seq_len} (a packed row holds whole sequences)")
    return args


# ----------------------------------------------------------------------------------------------- data


WORDS = ("the", "sum", "of", "two", "and", "is", "then", "we", "add", "carry", "digit", "so", "answer", "check",
         "first", "next", "step", "value", "result", "number", "tens", "ones", "write", "thus", "because")


def assistant_lengths(n: int, median: float, sigma: float, cap: int, seed: int) -> list[int]:
    """n log-normal lengths (median `median`, log-sd `sigma`), rounded, clipped to [4, cap]."""
    rng = random.Random(f"{seed}:lengths")
    return [min(cap, max(4, round(rng.lognormvariate(math.log(median), sigma)))) for _ in range(n)]


def _text(rng: random.Random, chars: int) -> str:
    words = []
    while sum(map(len, words)) + len(words) < chars:
        words.append(rng.choice(WORDS) if rng.random() < 0.8 else str(rng.randrange(1000)))
    return " ".join(words)[:max(1, chars)]


def chat_records(n: int, median: float, sigma: float, max_seq_len: int, chars_per_token: float,
                 seed: int) -> list[dict]:
    """n conversations: a short user question, an assistant answer of a log-normal length in tokens (capped so the
    rendered chat fits max_seq_len: 48 tokens are kept for the template and question)."""
    rng = random.Random(f"{seed}:text")
    cap = max(4, max_seq_len - 48)
    records = []
    for length in assistant_lengths(n, median, sigma, cap, seed):
        a, b = rng.randrange(100), rng.randrange(100)
        answer = _text(rng, int(length * chars_per_token))
        records.append({"messages": [{"role": "user", "content": f"What is {a}+{b}?"},
                                     {"role": "assistant", "content": answer}]})
    return records


def render(records: list[dict], tokenizer_dir: Path, max_seq_len: int, seed: int) -> list[dict]:
    """Our SFT pipeline's examples: {"tokens", "loss_mask"} in record order (ChatML; truncated to max_seq_len)."""
    from r1_megatron.data.sft_dataset import SFTDataConfig, load_sft_datasets
    from r1_megatron.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir))
    config = SFTDataConfig(paths=("generated",), max_seq_len=max_seq_len, shuffle=False, seed=seed)
    dataset = load_sft_datasets(config, tokenizer, records, source="generated").train
    return [{"tokens": e.tokens, "loss_mask": e.loss_mask} for e in dataset.examples]


def chars_per_token(tokenizer_dir: Path) -> float:
    from r1_megatron.tokenizer import load_tokenizer

    sample = _text(random.Random(0), 4000)
    return len(sample) / max(1, len(load_tokenizer(str(tokenizer_dir)).encode(sample)))


def hf_labels(tokens: list[int], loss_mask: list[float]) -> list[int]:
    """transformers' labels for one example: labels[t] = tokens[t] where loss_mask[t - 1] trains it, else -100
    (the model shifts them: logits[t] predicts labels[t + 1])."""
    return [-100] + [tok if m > 0 else -100 for tok, m in zip(tokens[1:], loss_mask)]


def sequences_hash(token_lists) -> str:
    """Order-free fingerprint of a step's sequences."""
    return hashlib.sha1(json.dumps(sorted(list(map(int, t)) for t in token_lists)).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- efficiency


def packing_efficiency(examples: list[dict], global_batch: int, micro_batch: int, budgets: list[int],
                       pad_id: int) -> dict:
    """real / computed positions over all examples in global batches (module docstring)."""
    from r1_megatron.sft.step import Batching, micro_batches
    from r1_megatron.training.packing import TrainSequence, first_fit_decreasing, packing_stats

    seqs = [TrainSequence(e["tokens"], e["loss_mask"]) for e in examples]
    steps = [seqs[i:i + global_batch] for i in range(0, len(seqs), global_batch)]
    real = sum(len(s.tokens) - 1 for s in seqs)

    def ours(batching: Batching) -> dict:
        stats = [packing_stats(step, micro_batches(step, batching, pad_id)) for step in steps]
        computed = sum(s.computed_tokens for s in stats)
        return {"efficiency": real / computed, "computed_tokens": computed,
                "micro_batches": sum(s.micro_batches for s in stats)}

    per_micro = 0
    for step in steps:
        for i in range(0, len(step), micro_batch):
            chunk = step[i:i + micro_batch]
            per_micro += micro_batch * max(len(s.tokens) - 1 for s in chunk)
    lengths = [len(s.tokens) - 1 for s in seqs]
    rows = []
    for budget in budgets:
        packed = ours(Batching(micro_batch_size=1, max_tokens_per_micro_batch=budget))
        whole = len(first_fit_decreasing(lengths, budget)) * budget
        rows.append({"budget": budget, "ours_pack": packed["efficiency"], "ours_pack_micro_batches":
                     packed["micro_batches"], "ffd_whole_set": real / whole})
    padded = ours(Batching(micro_batch_size=micro_batch))
    return {"examples": len(seqs), "global_batch": global_batch, "steps": len(steps), "real_tokens": real,
            "pad_to_step_longest": padded["efficiency"], "pad_per_micro_batch": real / per_micro,
            "micro_batch": micro_batch, "by_budget": rows}


# ----------------------------------------------------------------------------------------------- workers


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _peak_memory(device: str) -> dict:
    import resource

    import torch

    out = {"peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        out["peak_cuda_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _load_examples(spec: dict) -> list[dict]:
    return json.loads(Path(spec["data"]).read_text())


@dataclasses.dataclass
class _Recorder:
    """What a peer worker collects per optimizer step (from a forward pre-hook and Trainer callbacks)."""

    device: str
    seconds: list = dataclasses.field(default_factory=list)
    losses: list = dataclasses.field(default_factory=list)
    tokens: list = dataclasses.field(default_factory=list)
    computed: list = dataclasses.field(default_factory=list)
    first_step: list = dataclasses.field(default_factory=list)  # (tokens, labels) of each sequence of step 1
    _tokens: int = 0
    _computed: int = 0
    _last: float = 0.0

    def start(self) -> None:
        _sync(self.device)
        self._last = time.perf_counter()

    def end_step(self) -> None:
        _sync(self.device)
        now = time.perf_counter()
        self.seconds.append(now - self._last)
        self._last = now
        self.tokens.append(self._tokens)
        self.computed.append(self._computed)
        self._tokens = self._computed = 0

    def see(self, input_ids, labels, attention_mask=None, position_ids=None) -> None:
        """One forward's inputs: count real positions and sequences; keep step 1's sequences."""
        self._computed += input_ids.numel()
        for tokens, lab in _split_sequences(input_ids, labels, attention_mask, position_ids):
            self._tokens += len(tokens) - 1
            if not self.seconds:
                self.first_step.append((tokens, lab))


def _split_sequences(input_ids, labels, attention_mask, position_ids):
    """The sequences of a padded batch (rows, attention mask) or a padding-free one (position_ids restart at 0)."""
    out = []
    ids, lab = input_ids.cpu(), labels.cpu()
    if attention_mask is not None:
        mask = attention_mask.cpu().bool()
        for r in range(ids.shape[0]):
            if mask[r].any():
                out.append((ids[r][mask[r]].tolist(), lab[r][mask[r]].tolist()))
        return out
    if position_ids is None:  # plain rows, no padding
        return [(ids[r].tolist(), lab[r].tolist()) for r in range(ids.shape[0])]
    pos = position_ids.cpu()
    for r in range(ids.shape[0]):
        starts = (pos[r] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
        for a, b in zip(starts, starts[1:]):
            out.append((ids[r, a:b].tolist(), lab[r, a:b].tolist()))
    return out


def reference_loss(hf_dir: str, sequences: list[tuple[list[int], list[int]]], device: str) -> float:
    """Σ CE over trained labels / their count, the HF model at the checkpoint's weights on each sequence alone."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(device).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for tokens, labels in sequences:
            ids = torch.tensor([tokens], device=device)
            lab = torch.tensor(labels[1:], device=device)
            logits = model(ids).logits[0, :-1].float()
            ce = torch.nn.functional.cross_entropy(logits, lab, ignore_index=-100, reduction="sum")
            total += float(ce)
            count += int((lab != -100).sum())
    return total / max(count, 1)


def worker_ours(spec: dict) -> dict:
    import torch

    from r1_megatron.kernels import select_backend
    from r1_megatron.models import load_hf
    from r1_megatron.runtime import ParallelConfig, initialize_parallel, seed_everything
    from r1_megatron.sft.step import Batching, sft_step
    from r1_megatron.training.optimizer import OptimizerSettings, build_optimizer, build_scheduler
    from r1_megatron.training.packing import TrainSequence
    from r1_megatron.training.step import build_ddp

    device, G = spec["device"], spec["global_batch"]
    initialize_parallel(ParallelConfig())
    seed_everything(spec["seed"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["dtype"]]
    model = load_hf(spec["hf_dir"], dtype=dtype).to(device)
    ddp = build_ddp(model)
    settings = OptimizerSettings(lr=spec["lr"], adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8, weight_decay=0.0,
                                 clip_grad=1.0)
    optimizer = build_optimizer(ddp, settings)
    scheduler = build_scheduler(optimizer, settings)
    batching = Batching(micro_batch_size=1, max_tokens_per_micro_batch=spec["budget"]) if spec["mode"] == "pack" \
        else Batching(micro_batch_size=spec["micro_batch"])
    examples = _load_examples(spec)
    steps = [[TrainSequence(list(e["tokens"]), list(e["loss_mask"])) for e in examples[k * G:(k + 1) * G]]
             for k in range(spec["warmup"] + spec["steps"])]
    out = {"seconds": [], "losses": [], "tokens": [], "computed": []}
    for seqs in steps:
        _sync(device)
        t0 = time.perf_counter()
        result = sft_step(ddp, optimizer, scheduler, seqs, batching, spec["pad_id"], torch.device(device))
        _sync(device)
        out["seconds"].append(time.perf_counter() - t0)
        out["losses"].append(result.step.loss)
        out["tokens"].append(result.tokens)
        out["computed"].append(result.computed)
    inner = optimizer.chained_optimizers[0] if hasattr(optimizer, "chained_optimizers") else optimizer
    out.update(first_step_hash=sequences_hash(s.tokens for s in steps[0]),
               optimizer=f"{type(optimizer).__name__}({type(getattr(inner, 'optimizer', inner)).__name__})",
               kernel_backend=select_backend(torch.zeros(1, device=device)).value, **_peak_memory(device))
    return out


def _peer_args(cls, spec: dict, out_dir: str, **extra):
    """TrainingArguments / SFTConfig with the benchmark's optimisation settings (activation checkpointing off:
    TRL's SFTConfig turns it on by default; transformers 5 renamed gradient_checkpointing to it)."""
    names = {f.name for f in dataclasses.fields(cls)}
    extra["activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"] = False
    return cls(output_dir=out_dir, learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
               weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0,
               max_steps=spec["warmup"] + spec["steps"], logging_strategy="steps", logging_steps=1, report_to="none",
               save_strategy="no", disable_tqdm=True, seed=spec["seed"], data_seed=spec["seed"],
               dataloader_num_workers=0, dataloader_pin_memory=False, use_cpu=spec["device"] == "cpu",
               bf16=spec["dtype"] == "bf16", **extra)


def worker_peer(spec: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    device, config = spec["device"], spec["config"]
    torch.manual_seed(spec["seed"])
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["hf_dir"], dtype=torch.float32, attn_implementation="sdpa")
    model = model.to(device)
    used = spec["examples_used"]
    examples = _load_examples(spec)[:used]
    rows = [{"input_ids": list(e["tokens"]), "labels": hf_labels(e["tokens"], e["loss_mask"])} for e in examples]
    rec = _Recorder(device)

    def pre_hook(module, args, kwargs):
        if module.training:
            rec.see(kwargs.get("input_ids", args[0] if args else None), kwargs["labels"] if "labels" in kwargs else
                    kwargs.get("shift_labels"), kwargs.get("attention_mask"), kwargs.get("position_ids"))

    model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    if config == "torch_loop":
        return {**_torch_loop(model, tokenizer, rows, spec, rec), **_peer_report(spec, rec)}

    class Timing(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            rec.start()

        def on_step_end(self, args, state, control, **kw):
            rec.end_step()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                rec.losses.append(float(logs["loss"]))

    ga = spec["global_batch"] // spec["micro_batch"]
    with tempfile.TemporaryDirectory(prefix="bench_sft_peer_") as tmp:
        if config == "trainer_pad":
            from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

            args = _peer_args(TrainingArguments, spec, tmp, per_device_train_batch_size=spec["micro_batch"],
                              gradient_accumulation_steps=ga, train_sampling_strategy="sequential",
                              remove_unused_columns=False)
            collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
            trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator,
                              callbacks=[Timing()])
        else:
            from datasets import Dataset
            from trl import SFTConfig, SFTTrainer

            data = Dataset.from_list(rows)
            if config == "trl_pad":
                args = _peer_args(SFTConfig, spec, tmp, per_device_train_batch_size=spec["micro_batch"],
                                  gradient_accumulation_steps=ga, train_sampling_strategy="sequential",
                                  max_length=spec["max_seq_len"], packing=False)
            else:  # trl_pack
                args = _peer_args(SFTConfig, spec, tmp, per_device_train_batch_size=1,
                                  gradient_accumulation_steps=spec["pack_accumulation"], max_length=spec["budget"],
                                  packing=True)
            trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                                 callbacks=[Timing()])
        trainer.train()
        optimizer = trainer.optimizer
        inner = getattr(optimizer, "optimizer", optimizer)
        name = f"{type(optimizer).__name__}({type(inner).__name__}, fused={inner.defaults.get('fused')})"
        extra = {"optimizer": name, "gradient_accumulation_steps": args.gradient_accumulation_steps,
                 "per_device_train_batch_size": args.per_device_train_batch_size,
                 "padding_free": bool(getattr(trainer, "padding_free", False)),
                 "activation_checkpointing": bool(getattr(args, "activation_checkpointing",
                                                          getattr(args, "gradient_checkpointing", False))),
                 "bf16": bool(args.bf16)}
    return {**extra, **_peer_report(spec, rec)}


def _peer_report(spec: dict, rec: _Recorder) -> dict:
    device = spec["device"]
    memory = _peak_memory(device)
    return {"seconds": rec.seconds, "losses": rec.losses, "tokens": rec.tokens, "computed": rec.computed,
            "first_step_hash": sequences_hash(t for t, _ in rec.first_step),
            "first_step_sequences": len(rec.first_step),
            "reference_loss": reference_loss(spec["hf_dir"], rec.first_step, device), **memory}


def _torch_loop(model, tokenizer, rows: list[dict], spec: dict, rec: _Recorder) -> dict:
    """A plain PyTorch loop: micro-batches padded like DataCollatorForSeq2Seq, loss summed over the micro-batches
    and divided by the global batch's trained-token count, torch AdamW, clip_grad_norm_."""
    import torch

    device, G, mb = spec["device"], spec["global_batch"], spec["micro_batch"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"], betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    pad = tokenizer.pad_token_id
    model.train()
    rec.start()
    for k in range(spec["warmup"] + spec["steps"]):
        step = rows[k * G:(k + 1) * G]
        n_items = sum(sum(1 for x in r["labels"][1:] if x != -100) for r in step)
        total = 0.0
        for i in range(0, G, mb):
            chunk = step[i:i + mb]
            T = max(len(r["input_ids"]) for r in chunk)
            ids = torch.tensor([r["input_ids"] + [pad] * (T - len(r["input_ids"])) for r in chunk], device=device)
            labels = torch.tensor([r["labels"] + [-100] * (T - len(r["labels"])) for r in chunk], device=device)
            mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (T - len(r["input_ids"])) for r in chunk],
                                device=device)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=spec["dtype"] == "bf16"):
                logits = model(input_ids=ids, attention_mask=mask, labels=labels).logits
            ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                                   ignore_index=-100, reduction="sum") / n_items
            ce.backward()
            total += float(ce)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rec.end_step()
        rec.losses.append(total)
    return {"optimizer": f"AdamW(fused={optimizer.defaults.get('fused')})"}


def run_worker(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    set_threads(spec["threads"])
    result = worker_ours(spec) if spec["config"] in OURS else worker_peer(spec)
    result["torch_threads"] = __import__("torch").get_num_threads()
    Path(spec["out"]).write_text(json.dumps(result))


# ----------------------------------------------------------------------------------------------- the parent


def _installed(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def choose_configs(wanted: str | None, skipped: dict) -> list[str]:
    """Ours + the peers that can run here (`wanted` = an explicit subset); unavailable ones go to `skipped`."""
    has_accelerate, has_trl = _installed("accelerate") is not None, _installed("trl") is not None
    available = list(OURS)
    if has_accelerate:
        available.append("trainer_pad")
    else:
        skipped["trainer_pad"] = "transformers' Trainer needs accelerate, which is not installed"
    if has_trl and has_accelerate:
        available += ["trl_pad", "trl_pack"]
    else:
        skipped["trl_pad"] = skipped["trl_pack"] = "TRL (trl, accelerate) is not installed"
    if wanted is None:
        if not has_accelerate:
            available.append("torch_loop")
        return available
    chosen = wanted.split(",")
    unknown = set(chosen) - set(OURS + PEERS)
    if unknown:
        raise SystemExit(f"--configs: unknown {sorted(unknown)}; known: {', '.join(OURS + PEERS)}")
    missing = [c for c in chosen if c not in available + ["torch_loop"]]
    if missing:
        raise SystemExit(f"--configs: {missing} cannot run here: {[skipped[c] for c in missing]}")
    for c in set(skipped) & set(chosen):
        skipped.pop(c)
    return chosen


def write_checkpoint(size: dict, directory: Path, seed: int) -> None:
    """A random Qwen2 (transformers' init) + the character-level ChatML tokenizer, in one HF directory."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1_megatron.data.synthetic_chat import build_chat_tokenizer

    build_chat_tokenizer(directory)
    torch.manual_seed(seed)
    config = Qwen2Config(**COMMON_QWEN2, **size, pad_token_id=0, eos_token_id=2, bos_token_id=None)
    Qwen2ForCausalLM(config).float().save_pretrained(directory)


def _worker_env(args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(args.threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    if args.device == "cpu":
        # the PyTorch kernels: with TRITON_INTERPRET=1 (as the test suite sets it) Triton's interpreter would dominate
        env.setdefault("R1_MEGATRON_KERNELS", "torch")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_config(config: str, spec: dict, args: argparse.Namespace, tmp: Path) -> dict:
    """One configuration in a fresh subprocess; returns its result or {"error": ...}."""
    spec = dict(spec, config=config, mode="pack" if config.endswith("pack") else "pad",
                out=str(tmp / f"{config}.result.json"))
    spec_path = tmp / f"{config}.spec.json"
    spec_path.write_text(json.dumps(spec))
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                              env=_worker_env(args), capture_output=True, text=True, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.worker_timeout} s"}
    wall = time.perf_counter() - started
    if proc.returncode != 0 or not Path(spec["out"]).exists():
        return {"error": f"exit {proc.returncode}: {proc.stderr[-3000:]}"}
    result = json.loads(Path(spec["out"]).read_text())
    result["worker_wall_s"] = wall
    warnings = [line.strip() for line in proc.stderr.splitlines() if "warn" in line.lower()]
    result["warnings"] = list(dict.fromkeys(w[:300] for w in warnings))[:10]
    return result


def summarise(rounds: list[dict], warmup: int) -> dict:
    """Timed-step figures of one configuration: the steps after the warmup of every round."""
    sec = [x for r in rounds for x in r["seconds"][warmup:]]
    tok = [x for r in rounds for x in r["tokens"][warmup:]]
    comp = [x for r in rounds for x in r["computed"][warmup:]]
    if not sec or len(sec) != len(tok) or len(tok) != len(comp):
        raise ValueError(f"timed steps: {len(sec)} times, {len(tok)} token counts, {len(comp)} computed counts")
    return {"tokens_per_s": statistics.median(t / s for t, s in zip(tok, sec)),
            "tokens_per_s_total": sum(tok) / sum(sec),
            "tokens_per_s_best_step": max(t / s for t, s in zip(tok, sec)),
            "tokens_per_s_by_round": [statistics.median(t / s for t, s in zip(r["tokens"][warmup:],
                                                                              r["seconds"][warmup:]))
                                      for r in rounds],
            "computed_tokens_per_s": statistics.median(c / s for c, s in zip(comp, sec)),
            "median_step_s": statistics.median(sec), "timed_steps": len(sec), "real_tokens_timed": sum(tok),
            "computed_tokens_timed": sum(comp), "computed_efficiency": sum(tok) / sum(comp) if sum(comp) else None,
            "first_step_loss": rounds[0]["losses"][0] if rounds[0]["losses"] else None}


def combine_rounds(rounds: list[dict], warmup: int, name: str, errors: dict) -> dict:
    """One configuration's entry: round 1's per-step record (losses, hashes, ...), the other rounds' times, and
    the summary over all rounds; an error of any round makes the entry an error."""
    failed = [r["error"] for r in rounds if "error" in r]
    if failed:
        errors[name] = failed[0]
        print(f"{name} FAILED: {failed[0][-800:]}", flush=True)
        return {"error": failed[0]}
    entry = {k: v for k, v in rounds[0].items() if k not in ("seconds", "tokens", "computed", "worker_wall_s")}
    entry["rounds"] = [{k: r[k] for k in ("seconds", "losses", "tokens", "computed", "worker_wall_s")}
                       for r in rounds]
    entry["losses_agree_across_rounds"] = all(r["losses"] == rounds[0]["losses"] for r in rounds)
    try:
        entry["summary"] = summarise(rounds, warmup)
    except ValueError as e:
        errors[name] = str(e)
        return {"error": str(e), **entry}
    return entry


def loss_check(configs: dict, ours_hash: str | None, tol: float) -> dict:
    """First-step losses against the unpacked HF reference and each other; same-data hashes (module docstring)."""
    same = {c: r for c, r in configs.items() if c in SAME_DATA and "error" not in r}
    refs = [r["reference_loss"] for c, r in same.items() if r.get("reference_loss") is not None]
    reference = refs[0] if refs else None
    diffs, hashes_agree = {}, True
    for c, r in same.items():
        loss = r["summary"]["first_step_loss"]
        if reference is not None and loss is not None:
            diffs[f"{c}-reference"] = loss - reference
        if ours_hash is not None and r.get("first_step_hash") != ours_hash:
            hashes_agree = False
    names = list(same)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            la, lb = same[a]["summary"]["first_step_loss"], same[b]["summary"]["first_step_loss"]
            if la is not None and lb is not None:
                diffs[f"{a}-{b}"] = la - lb
    own = {}
    pack = configs.get("trl_pack")
    if pack is not None and "error" not in pack and pack["summary"]["first_step_loss"] is not None:
        own["trl_pack-own_reference"] = pack["summary"]["first_step_loss"] - pack["reference_loss"]
    later = {}  # per later step, the largest loss spread among same-data configurations
    steps = min((len(r["losses"]) for r in same.values()), default=0)
    for k in range(1, steps):
        values = [r["losses"][k] for r in same.values()]
        later[str(k + 1)] = max(values) - min(values)
    worst = max((abs(d) for d in list(diffs.values()) + list(own.values())), default=None)
    ok = worst is not None and worst <= tol and hashes_agree and reference is not None
    return {"tolerance": tol, "reference_loss": reference, "differences": diffs, "own_reference_differences": own,
            "max_abs_difference": worst, "same_first_step_sequences": hashes_agree,
            "later_step_loss_spread": later, "ok": ok}


def ratios(configs: dict) -> dict:
    out = {}
    for o in OURS:
        for p in PEERS:
            if o in configs and p in configs and "error" not in configs[o] and "error" not in configs[p]:
                out[f"{o}/{p}"] = configs[o]["summary"]["tokens_per_s"] / configs[p]["summary"]["tokens_per_s"]
    return out


def environment(args: argparse.Namespace, argv: list[str] | None) -> dict:
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    script = Path(__file__).resolve()
    try:
        script = script.relative_to(Path.cwd())
    except ValueError:
        pass
    return {"command": " ".join([Path(sys.executable).name, str(script), *(sys.argv[1:] if argv is None else argv)]),
            "device_type": args.device,
            "device": torch.cuda.get_device_name() if args.device == "cuda" else cpu_name(),
            "cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None, "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": _installed("transformers"), "trl": _installed("trl"),
            "accelerate": _installed("accelerate"),
            "datasets": _installed("datasets"), "megatron_core": _installed("megatron-core"),
            "r1_megatron_commit": commit, "R1_MEGATRON_KERNELS": _worker_env(args).get("R1_MEGATRON_KERNELS"),
            "load_average_start": list(os.getloadavg())}


def run(args: argparse.Namespace, argv: list[str] | None) -> dict:
    from r1_megatron.sft.step import Batching, micro_batches
    from r1_megatron.tokenizer import load_tokenizer
    from r1_megatron.training.packing import TrainSequence

    skipped: dict[str, str] = {}
    configs = choose_configs(args.configs, skipped)
    env = environment(args, argv)
    settings = {k: getattr(args, k) for k in ("dtype", "examples", "global_batch", "micro_batch", "max_seq_len",
                                              "budget", "budgets", "length_median", "length_sigma", "warmup", "steps",
                                              "rounds", "lr", "threads", "seed", "loss_tol")}
    settings.update(threads_note=THREADS_NOTE if args.device == "cpu" else None, configs=configs,
                    optimizer="AdamW betas (0.9, 0.95) eps 1e-8 weight decay 0, constant LR, clip 1.0",
                    smoke=args.smoke)
    payload = {"benchmark": "sft", "env": env, "settings": settings, "sizes": {}, "skipped": skipped, "errors": {}}
    with tempfile.TemporaryDirectory(prefix="bench_sft_") as tmp_name:
        tmp = Path(tmp_name)
        for size in args.sizes:
            hf_dir = args.hf_dir or tmp / size
            if args.hf_dir is None:
                write_checkpoint(SIZES[size], hf_dir, args.seed)
            cpt = chars_per_token(hf_dir)
            records = chat_records(args.examples, args.length_median, args.length_sigma, args.max_seq_len, cpt,
                                   args.seed)
            examples = render(records, hf_dir, args.max_seq_len, args.seed)
            data_path = tmp / f"{size}.examples.json"
            data_path.write_text(json.dumps(examples))
            pad_id = load_tokenizer(str(hf_dir)).pad_token_id
            if "data" not in payload:
                lengths = sorted(len(e["tokens"]) for e in examples)
                payload["data"] = {
                    "generator": f"assistant length ~ lognormal(median {args.length_median} tokens, sigma "
                                 f"{args.length_sigma}), capped at max_seq_len - 48; ChatML template",
                    "examples": len(examples), "length_min": lengths[0], "length_median": statistics.median(lengths),
                    "length_mean": statistics.mean(lengths), "length_p90": lengths[int(0.9 * (len(lengths) - 1))],
                    "length_max": lengths[-1], "trained_fraction": sum(sum(e["loss_mask"]) for e in examples)
                    / sum(len(e["tokens"]) - 1 for e in examples), "chars_per_token": cpt}
                payload["packing_efficiency"] = packing_efficiency(examples, args.global_batch, args.micro_batch,
                                                                   args.budgets, pad_id)
            G = args.global_batch
            first = [TrainSequence(e["tokens"], e["loss_mask"]) for e in examples[:G]]
            pack_rows = len(micro_batches(first, Batching(1, args.budget), pad_id))
            spec = {"hf_dir": str(hf_dir), "tokenizer_dir": str(hf_dir), "data": str(data_path),
                    "device": args.device, "dtype": args.dtype, "global_batch": G, "micro_batch": args.micro_batch,
                    "budget": args.budget, "max_seq_len": args.max_seq_len, "warmup": args.warmup,
                    "steps": args.steps, "lr": args.lr, "seed": args.seed, "threads": args.threads, "pad_id": pad_id,
                    "examples_used": len(examples), "pack_accumulation": pack_rows}
            entry = {"model": {"source": str(args.hf_dir) if args.hf_dir else "random weights (transformers init)",
                               "config": None if args.hf_dir else {**COMMON_QWEN2, **SIZES[size]}},
                     "trl_pack_accumulation": pack_rows, "configs": {}}
            results: dict[str, list[dict]] = {c: [] for c in configs}
            for r in range(args.rounds):  # rounds alternate the order, so slow spells of a shared machine spread out
                for config in (configs if r % 2 == 0 else configs[::-1]):
                    worker_spec = dict(spec)
                    if config in ("trainer_pad", "trl_pad", "torch_loop"):
                        # the same-data peers see exactly the examples ours trains on, in the same order
                        worker_spec["examples_used"] = (args.warmup + args.steps) * G
                    print(f"[{size}] round {r + 1}/{args.rounds} {config} ...", flush=True)
                    results[config].append(run_config(config, worker_spec, args, tmp))
            for config, rounds in results.items():
                entry["configs"][config] = combine_rounds(rounds, args.warmup, f"{size}/{config}", payload["errors"])
            ours_hash = next((r.get("first_step_hash") for c, r in entry["configs"].items()
                              if c in OURS and "error" not in r), None)
            entry["loss_check"] = loss_check(entry["configs"], ours_hash, args.loss_tol)
            entry["ratios"] = ratios(entry["configs"])
            payload["sizes"][size] = entry
    env["load_average_end"] = list(os.getloadavg())
    return payload


# ----------------------------------------------------------------------------------------------- output


def print_table(payload: dict) -> None:
    env = payload["env"]
    print(f"sft on {env['device_type']} ({env['device']}), {payload['settings']['dtype']}, torch {env['torch']}, "
          f"transformers {env['transformers']}, trl {env['trl']}; {payload['settings']['threads']} threads; load "
          f"{env['load_average_start'][0]:.2f} -> {env['load_average_end'][0]:.2f}")
    header = ["size", "config", "tok/s", "tok/s total", "best step", "computed/s", "step s", "computed eff",
              "first loss", "peak MiB"]
    print(" | ".join(f"{h:>12}" for h in header))
    for size, entry in payload["sizes"].items():
        for config, r in entry["configs"].items():
            if "error" in r:
                print(" | ".join(f"{c:>12}" for c in (size, config, "FAILED")))
                continue
            s = r["summary"]
            cells = [size, config, f"{s['tokens_per_s']:.0f}", f"{s['tokens_per_s_total']:.0f}",
                     f"{s['tokens_per_s_best_step']:.0f}", f"{s['computed_tokens_per_s']:.0f}",
                     f"{s['median_step_s']:.3f}", f"{s['computed_efficiency']:.3f}", f"{s['first_step_loss']:.6f}",
                     f"{r.get('peak_cuda_MiB', r['peak_rss_MiB']):.0f}"]
            print(" | ".join(f"{c:>12}" for c in cells))
        for name, value in entry["ratios"].items():
            print(f"  {size} {name}: {value:.2f}x")
        check = entry["loss_check"]
        print(f"  {size} loss check: reference {check['reference_loss']}, max |diff| {check['max_abs_difference']}, "
              f"same data {check['same_first_step_sequences']}, ok={check['ok']}")
    eff = payload["packing_efficiency"]
    print(f"packing efficiency over {eff['examples']} examples in {eff['steps']} global batches of "
          f"{eff['global_batch']}: pad to step's longest {eff['pad_to_step_longest']:.3f}, pad per micro-batch of "
          f"{eff['micro_batch']} {eff['pad_per_micro_batch']:.3f}")
    for row in eff["by_budget"]:
        print(f"  budget {row['budget']:>6}: ours pack {row['ours_pack']:.3f}, "
              f"FFD whole set {row['ffd_whole_set']:.3f}")
    for what, why in payload["skipped"].items():
        print(f"skipped {what}: {why}")
    for what, why in payload["errors"].items():
        print(f"error {what}: {why[-500:]}")


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(payload["sizes"])
    fig, axes = plt.subplots(1, len(sizes) + 1, figsize=(5.2 * (len(sizes) + 1), 4.8),
                             gridspec_kw={"width_ratios": [1] * len(sizes) + [1.4]})
    env, settings = payload["env"], payload["settings"]
    for ax, size in zip(axes, sizes):  # one linear panel per size: sizes differ by ~10x in speed
        configs = [c for c in OURS + PEERS if "summary" in payload["sizes"][size]["configs"].get(c, {})]
        values = [payload["sizes"][size]["configs"][c]["summary"]["tokens_per_s"] for c in configs]
        bars = ax.bar(range(len(configs)), values, color=[f"C{(OURS + PEERS).index(c)}" for c in configs])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set_xticks(range(len(configs)), configs, rotation=30, ha="right")
        ax.set_ylabel("real tokens / s (median timed step)")
        ax.set_title(f"{size}: SFT throughput, {env['device_type']} {settings['dtype']}, threads={settings['threads']}",
                     fontsize=10)
    right = axes[-1]
    eff = payload["packing_efficiency"]
    budgets = [r["budget"] for r in eff["by_budget"]]
    right.plot(budgets, [r["ours_pack"] for r in eff["by_budget"]], "o-", label="ours: pack each global batch (FFD)")
    right.plot(budgets, [r["ffd_whole_set"] for r in eff["by_budget"]], "s--", label="FFD over the whole set")
    right.axhline(eff["pad_per_micro_batch"], color="tab:gray", ls=":",
                  label=f"pad per micro-batch of {eff['micro_batch']} (HF collators)")
    right.axhline(eff["pad_to_step_longest"], color="black", ls="-.", label="pad to step's longest (ours, no packing)")
    right.set_xscale("log", base=2)
    right.set_xticks(budgets, [str(b) for b in budgets])
    right.set_ylim(0, 1.05)
    right.set_xlabel("packed row length (tokens per micro-batch)")
    right.set_ylabel("real / computed tokens")
    right.set_title(f"packing efficiency, {eff['examples']} length-skewed chats, global batch {eff['global_batch']}",
                    fontsize=10)
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    if args.worker is not None:
        run_worker(args.worker)
        return {}
    payload = run(args, argv)
    print_table(payload)
    out = write_payload(payload, args.out or RESULTS_DIR / f"sft_{args.device}.json")
    if not args.no_plot:
        picture = args.plot or out.with_suffix(".png")
        plot(payload, picture)
        print(f"wrote {picture}")
    return payload


if __name__ == "__main__":
    result = main()
    failed = bool(result) and (result["errors"] or not all(e["loss_check"]["ok"] for e in result["sizes"].values()))
    sys.exit(1 if failed else 0)
