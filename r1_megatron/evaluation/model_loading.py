"""The model `r1-megatron eval` evaluates: an HF directory or a training checkpoint, at the configured layout."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from .config import EvalRunConfig


@dataclasses.dataclass
class EvalModel:
    tokenizer: object
    model_id: dict  # what is evaluated, for results.json and the resume check
    _build: Callable[[], object]

    def build(self, cfg: EvalRunConfig):
        """Initialise the parallel layout and seeds, then this rank's R1GPTModel (collective under torchrun)."""
        from r1_megatron.runtime import initialize_parallel, seed_everything

        initialize_parallel(cfg.parallel)
        seed_everything(cfg.seed)
        return self._build()


def eval_model(cfg: EvalRunConfig) -> EvalModel:
    """The model to evaluate and its tokenizer, the model not built yet; a path that does not exist is a
    FileNotFoundError naming it, before anything heavy runs."""
    from r1_megatron.tokenizer import load_tokenizer

    m = cfg.model
    if m.path is not None:
        from r1_megatron.models.source import ModelSourceConfig

        source = ModelSourceConfig(path=m.path, dtype=m.dtype)
        source.check_path()
        tokenizer_dir, model_id = m.tokenizer or m.path, {"hf": str(Path(m.path).resolve())}
        build = source.build
    else:
        from r1_megatron.training.checkpoint import load_checkpoint_model, read_checkpoint_info, resolve_checkpoint

        checkpoint = resolve_checkpoint(m.checkpoint)
        info = read_checkpoint_info(checkpoint)
        tokenizer_dir = m.tokenizer or info.tokenizer_dir
        if tokenizer_dir is None:
            raise ValueError(f"model.checkpoint={m.checkpoint}: the checkpoint records no tokenizer; set "
                             "model.tokenizer=DIR")
        model_id = {"checkpoint": str(checkpoint.resolve()), "step": info.step}

        def build():
            return load_checkpoint_model(checkpoint)
    if not Path(tokenizer_dir).is_dir():
        raise FileNotFoundError(f"model.tokenizer: tokenizer directory {tokenizer_dir} does not exist")
    return EvalModel(load_tokenizer(tokenizer_dir), model_id, build)
