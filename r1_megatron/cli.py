"""The `r1-megatron` command (also `python -m r1_megatron`).

Commands are a table: name → (help, how to add its arguments, how to run it). `train` has its own table of
algorithms. A name that is not in a table is refused by argparse; nothing falls through to another command.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Callable

from r1_megatron import warning_filters


@dataclasses.dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


# ---- info, forward, plot, export --------------------------------------------------------------------------


def _info_args(parser) -> None:
    pass


def _info(args) -> int:
    from r1_megatron.info import main as run

    return run(args)


def _forward_args(parser) -> None:
    parser.add_argument("--preset", default="tiny-moe", help="model preset (default: tiny-moe)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)


def _forward(args) -> int:
    from r1_megatron.forward_check import main as run

    return run(args)


def _plot_args(parser) -> None:
    parser.add_argument("run_dir")


def _plot(args) -> int:
    from r1_megatron.plotting import plot_run

    for path in plot_run(args.run_dir):
        print(path)
    return 0


def _export_args(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="a run directory, a checkpoint root (its latest checkpoint) or one checkpoint "
                                       "directory")
    source.add_argument("--model", help="an HF directory (Qwen2/Llama/DeepSeek-V3) to convert; only with "
                                        "--format gguf")
    parser.add_argument("--out", required=True, help="HF directory (--format hf) or FILE.gguf to write (replaced "
                                                     "atomically)")
    parser.add_argument("--format", choices=("hf", "gguf"), default="hf",
                        help="hf: an HF directory (default); gguf: one GGUF file for llama.cpp / Ollama")
    parser.add_argument("--outtype", choices=("f16", "bf16", "q8_0", "f32"), default=None,
                        help="GGUF weight type (default: f16); only with --format gguf")
    parser.add_argument("--tokenizer", default=None,
                        help="directory whose tokenizer files to copy (default: the run's, as the checkpoint records)")
    for size in ("tp", "pp", "ep"):
        parser.add_argument(f"--{size}", type=int, default=1, help=f"{size.upper()} size to load the model at")
    parser.add_argument("--etp", type=int, default=None, help="expert-TP size (default: --tp)")


def _export_hf_dir_to_gguf(args) -> int:
    from r1_megatron.models.gguf_export import export_gguf

    out = export_gguf(args.model, args.out, outtype=args.outtype or "f16", tokenizer_dir=args.tokenizer)
    print(f"exported {args.model} -> {out}")
    return 0


def _export(args) -> int:
    if args.format == "hf" and (args.model is not None or args.outtype is not None):
        raise ValueError(f"{'--model' if args.model is not None else '--outtype'} needs --format gguf")
    if args.model is not None:
        return _export_hf_dir_to_gguf(args)
    import torch.distributed as dist

    from r1_megatron.runtime import ParallelConfig

    parallel = ParallelConfig(tp=args.tp, pp=args.pp, ep=args.ep, etp=args.etp)
    if args.format == "gguf":
        from r1_megatron.models.gguf_export import export_checkpoint_to_gguf

        result = export_checkpoint_to_gguf(args.ckpt, args.out, outtype=args.outtype or "f16",
                                           tokenizer_dir=args.tokenizer, parallel=parallel)
    else:
        from r1_megatron.training.checkpoint import export_checkpoint_to_hf

        result = export_checkpoint_to_hf(args.ckpt, args.out, tokenizer_dir=args.tokenizer, parallel=parallel)
    if dist.get_rank() == 0:
        print(f"exported step {result.step} ({result.checkpoint}) -> {result.out}")
        if result.tokenizer_dir is None and args.format == "hf":
            print("no tokenizer files were copied: the checkpoint records no tokenizer directory (--tokenizer DIR)")
    return 0


# ---- eval ----------------------------------------------------------------------------------------------------


def _eval_args(parser) -> None:
    from r1_megatron.evaluation.command import add_arguments

    add_arguments(parser)


def _eval(args) -> int:
    from r1_megatron.evaluation.command import main as run

    return run(args)


# ---- sample --------------------------------------------------------------------------------------------------


def _sample_args(parser) -> None:
    from r1_megatron.sampling.command import add_arguments

    add_arguments(parser)


def _sample(args) -> int:
    from r1_megatron.sampling.command import main as run

    return run(args)


# ---- pipeline ------------------------------------------------------------------------------------------------


def _pipeline_args(parser) -> None:
    from r1_megatron.pipeline.command import add_arguments

    add_arguments(parser)


def _pipeline(args) -> int:
    from r1_megatron.pipeline.command import main as run

    return run(args)


# ---- serve ---------------------------------------------------------------------------------------------------


def _serve_args(parser) -> None:
    from r1_megatron.serving.command import add_arguments

    add_arguments(parser)


def _serve(args) -> int:
    from r1_megatron.serving.command import main as run

    return run(args)


# ---- train ALGORITHM ---------------------------------------------------------------------------------------


def _grpo():
    from r1_megatron.grpo.config import GRPORunConfig
    from r1_megatron.grpo.trainer import GRPOTrainer

    return GRPOTrainer, GRPORunConfig


def _sft():
    from r1_megatron.sft.config import SFTRunConfig
    from r1_megatron.sft.trainer import SFTTrainer

    return SFTTrainer, SFTRunConfig


@dataclasses.dataclass(frozen=True)
class Algorithm:
    help: str
    description: str
    load: Callable[[], tuple[type, type]]  # (trainer class, config class), imported only for the one that runs


# `r1-megatron train NAME`
TRAINERS = {
    "grpo": Algorithm("GRPO: rollout -> rule rewards -> group advantages -> clipped updates",
                      "With no arguments: the built-in tiny CPU demo (r1_megatron/grpo/recipes/tiny_demo.yaml).",
                      _grpo),
    "sft": Algorithm("supervised fine-tuning: cold start, rejection-sampled data, distillation into students",
                     "With no arguments: the built-in tiny CPU SFT run (r1_megatron/sft/recipes/tiny_sft.yaml).",
                     _sft),
}


def _train_args(parser) -> None:
    algorithms = parser.add_subparsers(dest="algorithm", metavar="ALGORITHM", required=True)
    for name, algorithm in TRAINERS.items():
        sub = algorithms.add_parser(name, help=algorithm.help,
                                    description=algorithm.description + " Under torchrun, every rank runs this "
                                                                        "command.")
        sub.add_argument("--config", default=None, help="YAML recipe (default: the built-in one)")
        sub.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
        sub.add_argument("--print-config", action="store_true",
                         help="print the fully resolved config (every key, defaults included) as YAML and exit")
        sub.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. steps=50 optimizer.lr=1e-5")


def _train(args) -> int:
    from r1_megatron.training import run

    trainer, config = TRAINERS[args.algorithm].load()
    return run.run_command(trainer, config, args.config, args.resume, args.overrides,
                           print_config=args.print_config)


# every subcommand, by name: an unknown name is refused by argparse, never run as another command
COMMANDS = {
    "info": Command("versions, device and optional backends", _info_args, _info),
    "forward": Command("build a preset model and run one forward/backward pass", _forward_args, _forward),
    "export": Command("write a training checkpoint's model as an HF directory or a GGUF file (llama.cpp)",
                      _export_args, _export,
                      "Under torchrun, every rank runs this command (with --tp/--pp/--ep for models too big for "
                      "one process)."),
    "train": Command("train a model (grpo: R1-Zero-style RL; sft: supervised fine-tuning)", _train_args, _train),
    "eval": Command("evaluate a model on benchmarks: R1's pass@1 over k samples, pass@k, cons@k", _eval_args, _eval,
                    "R1's protocol by default (temperature 0.6, top-p 0.95, k samples per question). Under torchrun, "
                    "every rank runs this command (parallel.tp=..., parallel.ep=...; data parallel over the rest)."),
    "sample": Command("rejection sampling: k samples per prompt, keep the correct ones that pass R1's readability "
                      "filters, as SFT data", _sample_args, _sample,
                      "R1's rejection sampling (docs/sampling.md): correct responses without mixed languages, long "
                      "paragraphs or code blocks in the reasoning, de-duplicated. Under torchrun, every rank runs "
                      "this command."),
    "serve": Command("serve a model over an OpenAI-compatible HTTP API (completions, chat, streaming)",
                     _serve_args, _serve,
                     "Prints the URL when ready; SIGTERM finishes running requests (--shutdown-timeout) and exits. "
                     "Under torchrun, every rank runs this command (--tp/--pp/--ep); rank 0 serves HTTP."),
    "plot": Command("write PNG charts of a run's metrics", _plot_args, _plot),
    "pipeline": Command("the R1 pipeline: stages (grpo, sft, sample, eval, ...) from one recipe, resumable",
                        _pipeline_args, _pipeline,
                        "Runs the recipe's stages in order in this process, each reading earlier stages' outputs "
                        "(${STAGE.OUTPUT}); rerunning the same command skips finished stages and resumes an "
                        "interrupted one. Under torchrun, every rank runs this command."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1-megatron", description="DeepSeek-R1-style reasoning training on "
                                                                     "Megatron-Core")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_arguments(commands.add_parser(name, help=command.help, description=command.description))
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """argparse, with KEY=VALUE overrides allowed between the flags too (`eval a=1 --model M b=2`): argparse
    gives a positional list only its first run of words; later KEY=VALUE words join it, in order. Anything else
    it does not know gets argparse's own error."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(w.startswith("-") or "=" not in w for w in extra):
            parser.parse_args(argv)  # exits with the usage and what was not recognised
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    warning_filters.install()  # before any command imports megatron-core, which warns at import time
    from r1_megatron.grpo.reward_health import RewardFailure  # light: no torch
    from r1_megatron.training.run_stop import RunStopped  # light too

    parser = build_parser()
    args = parse_arguments(parser, argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command].run(args)
    except (ValueError, FileNotFoundError, FileExistsError, RewardFailure, RunStopped) as exc:
        print(f"r1-megatron {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
