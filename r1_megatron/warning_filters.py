"""The third-party warnings r1_megatron silences, each with the reason it carries no information for our users.

Installed once when `r1_megatron.runtime` is imported (every command and the Python API go through it), except
those that only one call raises, which hold around that call alone. Each filter is as narrow as the warning allows:
its message, and where the warning points to its origin, its module.
"""
from __future__ import annotations

import contextlib
import warnings

_FILTERS = (
    # megatron-core warns at import time for every optional accelerator library it lacks; the fallbacks it names are
    # exactly what we use without TransformerEngine/Apex (`r1-megatron info` reports which backends are present).
    dict(message=r".*(Transformer Engine|Apex).* not installed.*"),
    # TransformerConfig warns that its own default cuda_graph_scope value is deprecated.
    dict(message=r".*cuda_graph_scope.*"),
    # Megatron's optimizer checks `.grad` of every parameter it holds, and the distributed optimizer's fp32 shards
    # are views of the model's parameters (non-leaves), which torch warns about; their gradients are set explicitly.
    dict(message=r"The \.grad attribute of a Tensor that is not a leaf Tensor", category=UserWarning,
         module=r"megatron\.core\.optimizer\."),
    # torch 2.13 renamed these collectives; Megatron's distributed optimizer and gradient buffers still call the old
    # names, which work the same (our own kernels call the new name where it exists).
    dict(message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
         category=FutureWarning),
)


# megatron-core 0.16.1 (pinned) loads checkpoints through torch.distributed.checkpoint's deprecated `load_state_dict`
# and hands it ShardedTensors, which torch deprecates in favour of DTensor: FutureWarnings on every load (resume,
# export) about code that is neither ours nor our users' to change.
_CHECKPOINT_LOAD_FILTERS = (
    dict(message=r"`load_state_dict` is deprecated", category=FutureWarning, module=r"megatron\.core\.dist_checkpointing"),
    # attributed to whichever torch frame touched the ShardedTensor (the planner's helpers)
    dict(message=r"Please use DTensor instead and we are deprecating ShardedTensor", category=FutureWarning),
)


def install() -> None:
    for spec in _FILTERS:
        warnings.filterwarnings("ignore", **spec)


@contextlib.contextmanager
def checkpoint_load():
    """Around Megatron's dist_checkpointing.load only."""
    with warnings.catch_warnings():
        for spec in _CHECKPOINT_LOAD_FILTERS:
            warnings.filterwarnings("ignore", **spec)
        yield
