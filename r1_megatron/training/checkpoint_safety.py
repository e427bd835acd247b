"""What a checkpoint save checks so that it never replaces a good checkpoint with a bad or broken one: the weights
are finite, the disk has room (an estimate from the state's bytes), and a write that failed for want of space says
so in one line instead of torch's `[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598`.

Every check is collective: all ranks agree, so all refuse together."""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from r1_megatron.runtime import world_gloo_group, world_max
from r1_megatron.training.run_stop import RunStopped

# A failed write that leaves less than this free (or less than what the checkpoint still needed) ran out of space.
DISK_FULL_SLACK_BYTES = 1 << 20


class CheckpointRefused(RunStopped):
    """A checkpoint was not written (non-finite weights, no space, a failed write); the previous one and
    `latest` are intact."""


def first_nonfinite(models: dict[str, torch.nn.Module]) -> str | None:
    """'name.tensor' of this rank's first parameter or floating-point buffer holding NaN/Inf, else None
    (one device sync per model)."""
    for name, model in models.items():
        tensors = [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()]
                   if t is not None and t.is_floating_point()]
        if not tensors:
            continue
        finite_K = torch.stack([torch.isfinite(t).all() for _, t in tensors])
        if not bool(finite_K.all()):
            return f"{name}.{tensors[int((~finite_K).nonzero()[0, 0])][0]}"
    return None


def check_finite(models: dict[str, torch.nn.Module], what: str) -> None:
    """Refuse (CheckpointRefused on every rank) when any rank's weights hold NaN/Inf."""
    bad = first_nonfinite(models)
    if world_max(int(bad is not None)):
        where = f"'{bad}' on rank {dist.get_rank()}" if bad else "a tensor on another rank"
        raise CheckpointRefused(f"{what}: refusing to save non-finite weights ({where} holds NaN/Inf); nothing "
                                "was written")


def state_bytes(leaves) -> int:
    """Bytes of the tensors the checkpoint writes (each shard once: main replicas only), over all ranks: a lower
    bound on its size (file headers and pickled objects come on top)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory, is_main_replica

    local = sum(leaf.data.numel() * leaf.data.element_size() for leaf in leaves
                if isinstance(leaf, (ShardedTensor, ShardedTensorFactory)) and is_main_replica(leaf.replica_id)
                and leaf.data is not None)
    total = torch.tensor([local], dtype=torch.int64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total, group=world_gloo_group())
    return int(total.item())


def check_space(root: Path, needed: int, what: str) -> None:
    """Refuse before writing anything when `root`'s disk has less than `needed` bytes free (on any rank)."""
    free = shutil.disk_usage(root).free
    if world_max(int(free < needed)):
        raise CheckpointRefused(f"{what}: {no_space(root, needed, free)}; nothing was written")


def ran_out_of_space(error: BaseException | None, root: Path, still_needed: int) -> bool:
    """Whether a failed write failed for want of space: ENOSPC anywhere in the exception chain or its messages
    (dist_checkpointing's worker processes report theirs as text), or the disk (nearly) full after it."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return shutil.disk_usage(root).free < max(still_needed, DISK_FULL_SLACK_BYTES)


def no_space(root: Path, needed: int, free: int) -> str:
    return f"no space left on {root} (needed ~{human_bytes(needed)}, free {human_bytes(free)})"


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


def tree_bytes(path: Path) -> int:
    """Bytes of the files under `path` (0 if it is gone)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0
