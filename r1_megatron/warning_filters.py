"""The third-party warnings r1_megatron silences, each with the reason it carries no information for our users.

Installed once when `r1_megatron.runtime` is imported (every command and the Python API go through it). Each filter
is as narrow as the warning allows: its message, and where the warning points to its origin, its module.
"""
from __future__ import annotations

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


def install() -> None:
    for spec in _FILTERS:
        warnings.filterwarnings("ignore", **spec)
