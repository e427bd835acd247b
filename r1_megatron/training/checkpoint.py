"""Distributed checkpoints with Megatron's dist_checkpointing: nothing lost on a crash, loadable at any layout.

Layout of a checkpoint root:
    step_00000012/          complete checkpoint (dist_checkpointing files + r1_meta.json)
    .partial-step_00000015/ a save that never finished (crash): ignored, reported, removed by the next save
    latest                  name of the newest complete checkpoint, replaced atomically after the rename

A checkpoint holds the model, the optimizer (fully reshardable format), the LR scheduler, the step counter, a
caller-supplied dict (e.g. the trainer's data position), every rank's RNG states and where the run's tokenizer is
(for `r1-megatron export`). Model and optimizer load at any TP/PP/EP/DP layout; RNG states are restored when the
layout is the one that saved them.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from r1_megatron import warning_filters
from r1_megatron.atomic_file import write_text_atomically
from r1_megatron.runtime import ParallelConfig, current_parallel_config, world_max
from r1_megatron.training.checkpoint_safety import (CheckpointRefused, check_finite, check_space, no_space,
                                                    ran_out_of_space, state_bytes, tree_bytes)
from r1_megatron.training.step import unwrap

log = logging.getLogger(__name__)
_META = "r1_meta.json"
_PARTIAL = ".partial-"
# The distributed optimizer's default format in megatron-core 0.16.1, fully_sharded_model_space, builds
# ShardedTensors with flattened_range, which its own validator rejects. fully_reshardable gathers each model-parallel
# slice's optimizer state on its data-parallel rank 0 when saving and reshards on load along every dimension.
# Without chained_optim_avoid_prefix the keys depend on how many optimizers (dense, expert) a layout chains.
_OPTIMIZER_FORMAT = {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True}


def _step_name(step: int) -> str:
    return f"step_{step:08d}"


def _rng_state() -> dict:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _materialize_adam_state(optimizer, step: float) -> None:
    """Create the per-parameter Adam state torch creates lazily at the first step; the load overwrites it.

    Megatron builds the structure to load into from the live optimizer: without Apex/TE its distributed optimizer
    reads every parameter's "step", and the plain one only emits the step entry when the step is non-zero. So a
    never-stepped torch Adam gets zero moments and the checkpoint's own step."""
    for megatron_optimizer in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = megatron_optimizer.optimizer
        for group in inner.param_groups:
            for p in group["params"]:
                if not inner.state[p]:
                    inner.state[p].update(step=torch.tensor(float(step)), exp_avg=torch.zeros_like(p),
                                          exp_avg_sq=torch.zeros_like(p))


def _leaves(tree, path=()):
    """(path, leaf) for every non-container value of a nested dict/list (sharded tensors are leaves)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _leaves(value, (*path, i))
    else:
        yield path, tree


def _set_path(tree, path, value) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _is_step(path) -> bool:
    return path[-1] == "common_step" or (path[-1] == "step" and "param_groups" in path)


class _CanonicalOptimizerState:
    """The optimizer's part of a checkpoint in a layout-independent form.

    Megatron's ChainedOptimizer nests its sharded state by optimizer index, and how many optimizers it chains
    (dense, expert) depends on the expert-parallel size, so its native structure does not survive a change of EP.
    The per-parameter tensors are keyed by parameter name, however, so they are stored as a flat list of sharded
    leaves, with the Adam step beside them; hyperparameters come from the running optimizer and the restored LR
    scheduler.
    """

    def __init__(self, optimizer, model_state, *, saved_step: float | None = None):
        """For saving (saved_step None) or for loading a checkpoint whose optimizer step is `saved_step`."""
        loading = saved_step is not None
        if loading:
            _materialize_adam_state(optimizer, saved_step)
        self.native = optimizer.sharded_state_dict(model_state, is_loading=loading, metadata=_OPTIMIZER_FORMAT)
        # dist_checkpointing matches leaves by their (key, offsets), not by where they sit in the dict, so a flat
        # list is as good as the native nesting (several local experts share one key at different offsets).
        from megatron.core.dist_checkpointing.mapping import ShardedBase

        leaves = [(path, leaf) for path, leaf in _leaves(self.native) if isinstance(leaf, ShardedBase)]
        self.paths = [path for path, _ in leaves]
        steps = {float(v) for path, v in _leaves(self.native) if _is_step(path)}
        self.sharded = {"tensors": [leaf for _, leaf in leaves], "step": max(steps, default=0.0)}

    def restore(self, optimizer, loaded: dict) -> None:
        from megatron.core.dist_checkpointing.mapping import LocalNonpersistentObject

        for path, value in zip(self.paths, loaded["tensors"]):
            _set_path(self.native, path, value)
        for path, value in list(_leaves(self.native)):
            if _is_step(path):
                _set_path(self.native, path, loaded["step"])
            elif isinstance(value, LocalNonpersistentObject):  # what dist_checkpointing.load would unwrap
                _set_path(self.native, path, value.unwrap())
        optimizer.load_state_dict(self.native)


def _sharded_state(model, optimizer, *, with_rng: bool, saved_step: float | None = None, extra_models=None):
    """(dict for dist_checkpointing, canonical optimizer state or None); saved_step given when loading."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    model_state = unwrap(model).sharded_state_dict()
    state = {"model": model_state}
    for name, extra in (extra_models or {}).items():  # e.g. the GRPO reference model, under its own key prefix
        state[f"extra.{name}"] = unwrap(extra).sharded_state_dict(prefix=f"{name}.")
    canonical = None
    if optimizer is not None:
        canonical = _CanonicalOptimizerState(optimizer, model_state, saved_step=saved_step)
        state["optimizer"] = canonical.sharded
    if with_rng:  # one object per global rank: meaningful only when loaded at the saving layout
        rank, world = dist.get_rank(), dist.get_world_size()
        state["rng"] = ShardedObject("rng_state", _rng_state(), (world,), (rank,), replica_id=0)
    return state, canonical


@dataclass
class CheckpointInfo:
    step: int
    path: Path
    layout: dict
    world_size: int
    user_state: dict
    model_config: dict
    dtype: str
    tokenizer_dir: str | None = None  # the run's tokenizer directory, if the saver named one


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _recorded_tokenizer_dir(tokenizer_dir: str | os.PathLike, checkpoint: Path) -> str:
    """The tokenizer directory as r1_meta.json records it: relative to the checkpoint when it lies in the run
    directory (e.g. the synthetic task's RUN_DIR/tokenizer), so that a moved or copied run still finds it."""
    path, checkpoint = Path(tokenizer_dir).resolve(), checkpoint.resolve()
    return os.path.relpath(path, checkpoint) if path.is_relative_to(checkpoint.parent.parent) else str(path)


def save_checkpoint(root: str | os.PathLike, step: int, model, optimizer, scheduler,
                    user_state: dict | None = None, extra_models: dict | None = None,
                    tokenizer_dir: str | os.PathLike | None = None) -> Path:
    """Collectively save a checkpoint of step `step` under `root`; returns its directory.

    extra_models: {name: model} saved alongside (same layout rules), e.g. a frozen reference model.
    Written under a partial name and renamed into place only when every rank has finished; `latest` moves last.
    The model's config and dtype (and `tokenizer_dir`, the run's tokenizer) are recorded so that
    `r1-megatron export` can rebuild the model, and find its tokenizer, on its own.
    Refused (CheckpointRefused, nothing written, the previous checkpoint and `latest` intact) when a weight is
    NaN/Inf or the disk has no room; a write that fails part-way is removed, and a failure for want of space says
    so in one line.
    """
    root = Path(root)
    final, partial = root / _step_name(step), root / f"{_PARTIAL}{_step_name(step)}"
    what = f"checkpoint {final}"
    check_finite({"model": unwrap(model), **{name: unwrap(m) for name, m in (extra_models or {}).items()}}, what)
    if dist.get_rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"{_PARTIAL}*"):
            log.warning("removing partial checkpoint %s left by an interrupted save", stale)
            shutil.rmtree(stale, ignore_errors=True)
    _barrier()
    state = _sharded_state(model, optimizer, with_rng=True, extra_models=extra_models)[0]
    needed = state_bytes(leaf for _, leaf in _leaves(state))
    check_space(root, needed, what)
    if dist.get_rank() == 0:
        partial.mkdir()
    _barrier()
    _write(partial, state, lambda: _meta(step, final, model, scheduler, user_state, tokenizer_dir), needed, what)
    if dist.get_rank() == 0:
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        write_text_atomically(root / "latest", final.name)
    _barrier()
    return final


def _meta(step: int, final: Path, model, scheduler, user_state, tokenizer_dir) -> dict:
    layout = current_parallel_config()
    core = unwrap(model)
    meta = {"step": step, "scheduler": scheduler.state_dict(), "user_state": user_state or {},
            "layout": asdict(layout) if layout else {}, "world_size": dist.get_world_size(),
            "model_config": core.model_config.to_dict(),
            "dtype": str(core.config.params_dtype).removeprefix("torch.")}
    if tokenizer_dir is not None:
        meta["tokenizer_dir"] = _recorded_tokenizer_dir(tokenizer_dir, final)
    return meta


def _write(partial: Path, state: dict, meta, needed: int, what: str) -> None:
    """dist_checkpointing's files, then rank 0's r1_meta.json, into `partial`. When any rank fails, every rank
    raises after rank 0 removed `partial`: CheckpointRefused when the disk is full, else the failure itself."""
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException: every rank's write errors

    failure: BaseException | None = None
    try:
        dist_checkpointing.save(state, str(partial))
        if dist.get_rank() == 0:
            (partial / _META).write_text(json.dumps(meta(), default=str))
    except (Exception, CheckpointException) as e:  # re-raised below, once every rank knows and the partial is gone
        failure = e
    if not world_max(int(failure is not None)):
        _barrier()
        return
    full = ran_out_of_space(failure, partial.parent, needed - tree_bytes(partial))
    free = shutil.disk_usage(partial.parent).free  # before the partial files are removed
    if dist.get_rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
    _barrier()
    kept = "the partial checkpoint was removed; the previous checkpoint and `latest` are intact"
    if full:
        raise CheckpointRefused(f"{what}: {no_space(partial.parent, needed, free)}; {kept}") from failure
    if failure is None:
        raise CheckpointRefused(f"{what}: the save failed on another rank; {kept}")
    raise failure


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under `root` (None if there is none); partial saves are reported."""
    root = Path(root)
    for partial in sorted(root.glob(f"{_PARTIAL}*")):
        log.warning("ignoring partial checkpoint %s (an interrupted save); it is never loaded", partial)
    pointer = root / "latest"
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / _META).is_file():
            return candidate
        log.warning("%s points to %s, which is not a complete checkpoint; searching for the newest one", pointer,
                    candidate)
    complete = sorted(p for p in root.glob("step_*") if (p / _META).is_file())
    return complete[-1] if complete else None


def read_checkpoint_info(path: str | os.PathLike) -> CheckpointInfo:
    path = Path(path)
    meta_file = path / _META
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path}: not a complete r1_megatron checkpoint (no {_META})")
    meta = json.loads(meta_file.read_text())
    tokenizer_dir = str((path / meta["tokenizer_dir"]).resolve()) if meta.get("tokenizer_dir") else None
    return CheckpointInfo(step=meta["step"], path=path, layout=meta["layout"], world_size=meta["world_size"],
                          user_state=meta["user_state"], model_config=meta["model_config"], dtype=meta["dtype"],
                          tokenizer_dir=tokenizer_dir)


def load_checkpoint(path: str | os.PathLike, model, optimizer=None, scheduler=None,
                    extra_models: dict | None = None) -> CheckpointInfo:
    """Collectively load the checkpoint directory `path` into this rank's model (and optimizer, scheduler, and
    the extra models it was saved with).

    Works at any layout; RNG states are restored only when the world size and layout match the saving run.
    """
    from megatron.core import dist_checkpointing

    info = read_checkpoint_info(path)
    layout = current_parallel_config()
    same_layout = info.world_size == dist.get_world_size() and info.layout == (asdict(layout) if layout else {})
    saved_step = dist_checkpointing.load_common_state_dict(str(path))["optimizer"]["step"] if optimizer else None
    if not saved_step:  # never stepped: the checkpoint holds no optimizer state, a fresh optimizer is the same
        optimizer = None
    sharded, canonical = _sharded_state(model, optimizer, with_rng=same_layout and saved_step is not None,
                                        saved_step=saved_step, extra_models=extra_models)
    with warning_filters.checkpoint_load():
        state = dist_checkpointing.load(sharded, str(path))
    unwrap(model).load_state_dict(state["model"])
    for name, extra in (extra_models or {}).items():
        loaded = state[f"extra.{name}"]
        unwrap(extra).load_state_dict({k.removeprefix(f"{name}."): v for k, v in loaded.items()})
    if canonical is not None:  # after the model: fp32 master weights come from the checkpoint, not the model
        canonical.restore(optimizer, state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(json.loads((Path(path) / _META).read_text())["scheduler"])
    if "rng" in state:
        _set_rng_state(state["rng"])
    elif saved_step is not None:
        log.warning("checkpoint %s was saved at layout %s (world %d); RNG states are not restored at this layout",
                    path, info.layout, info.world_size)
    return info


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory itself, else the newest complete checkpoint of a checkpoint root or of a run
    directory's checkpoints/."""
    path = Path(path)
    if (path / _META).is_file():
        return path
    found = latest_checkpoint(path / "checkpoints" if (path / "checkpoints").is_dir() else path)
    if found is None:
        raise FileNotFoundError(f"{path}: no complete checkpoint (not a checkpoint directory with {_META}, nor a "
                                "checkpoint root or a run directory with one)")
    return found


@dataclass
class HFExport:
    checkpoint: Path  # the checkpoint directory that was exported
    step: int
    out: Path
    tokenizer_dir: str | None  # where the tokenizer files were copied from; None: no tokenizer was known


def export_checkpoint_to_hf(checkpoint: str | os.PathLike, out: str | os.PathLike, *,
                            tokenizer_dir: str | os.PathLike | None = None,
                            parallel: ParallelConfig | None = None) -> HFExport:
    """Write the model of a checkpoint (see resolve_checkpoint) as an HF directory, with the tokenizer files of
    `tokenizer_dir`, by default those of the tokenizer directory the checkpoint records.

    Loads at `parallel` (default one process: TP1/PP1/EP1), whatever layout saved it; collective under torchrun."""
    from r1_megatron.models import save_hf
    from r1_megatron.runtime import initialize_parallel

    path = resolve_checkpoint(checkpoint)
    info = read_checkpoint_info(path)
    tokenizer = str(tokenizer_dir) if tokenizer_dir is not None else info.tokenizer_dir
    if tokenizer_dir is not None and not Path(tokenizer).is_dir():
        raise FileNotFoundError(f"tokenizer directory {tokenizer} does not exist")
    if tokenizer is not None and not Path(tokenizer).is_dir():
        raise FileNotFoundError(f"{path / _META}: the run's tokenizer directory {tokenizer} no longer exists; pass "
                                "--tokenizer DIR")
    initialize_parallel(parallel)
    model = load_checkpoint_model(path)
    return HFExport(path, info.step, save_hf(model, out, tokenizer_dir=tokenizer), tokenizer)


def load_checkpoint_model(path: str | os.PathLike):
    """This rank's part of the model saved in the checkpoint directory `path`, built from the model config and
    dtype it records, at the current parallel layout (collective)."""
    from r1_megatron.models import ModelConfig, build_model

    info = read_checkpoint_info(path)
    model = build_model(ModelConfig.from_dict(info.model_config), dtype=getattr(torch, info.dtype))
    load_checkpoint(path, model)
    return model
