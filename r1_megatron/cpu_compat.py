"""Megatron-Core on CPU: the one place where megatron-core 0.16.1 is adapted to a machine without CUDA.

Megatron-Core assumes CUDA in ~50 places (streams, events, `torch.cuda.*` RNG calls, `device="cuda"` in
tensor factories, `.type() == 'torch.cuda.FloatTensor'` checks). With the patches below, TP/PP/EP/DP run on
CPU with gloo, which is how CI and laptops run the real Megatron code paths. `apply()` is a no-op when CUDA is
available, so production runs never see any of this. Each patch says what it fixes; they depend on the pinned
megatron-core version (setup.py pins 0.16.1).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import types

import torch

_applied = False


class _NullStreamOrEvent:
    """Stands in for torch.cuda.Stream/Event: on CPU every operation is already ordered and complete."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def record_event(self, *args, **kwargs):
        return _NullStreamOrEvent()

    def wait_event(self, *args, **kwargs):
        pass

    def record(self, *args, **kwargs):
        pass

    def wait(self, *args, **kwargs):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):  # TextGenerationController times its steps with events
        return 0.0


# Megatron allocates with device="cuda" (the optimizer's found_inf, the schedules' token counts, clip_grads' norms,
# MoE trackers, dist-checkpointing's exchange buffers). In exactly the Megatron modules that do, the name `torch` is
# rebound to a view of torch whose tensor factories put a CUDA device on the CPU. Nothing else sees a change: a
# global TorchFunctionMode would put a Python hook on every torch call of every user, and wrapping torch.zeros & co.
# globally breaks `with torch.device("meta")` (torch keeps the set of factories it redirects by identity).
_FACTORIES = ("tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "rand", "randn", "randint",
              "zeros_like", "ones_like", "empty_like", "full_like", "eye", "triu", "tril")
_ALLOCATE_ON_CUDA = (  # megatron-core 0.16.1 modules with a device="cuda" (or a device argument that is "cuda")
    "megatron.core.dist_checkpointing.exchange_utils", "megatron.core.dist_checkpointing.mapping",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver", "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.optimizer.clip_grads", "megatron.core.optimizer.grad_scaler", "megatron.core.optimizer.optimizer",
    "megatron.core.pipeline_parallel.schedules", "megatron.core.rerun_state_machine", "megatron.core.tensor_parallel.data",
    "megatron.core.transformer.moe.moe_utils", "megatron.core.transformer.utils", "megatron.core.utils",
)


def _is_cuda(device) -> bool:
    if isinstance(device, int) and not isinstance(device, bool):
        return True  # an integer device is a CUDA ordinal in torch
    return isinstance(device, (str, torch.device)) and torch.device(device).type == "cuda"


def _on_cpu(factory):
    @functools.wraps(factory)
    def cpu_factory(*args, **kwargs):
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return factory(*args, **kwargs)

    return cpu_factory


class _TorchOnCpu(types.ModuleType):
    """torch itself, but for the factories that allocate: those map a CUDA device to the CPU."""

    def __init__(self):
        super().__init__("torch")
        for name in _FACTORIES:
            setattr(self, name, _on_cpu(getattr(torch, name)))

    def __getattr__(self, name):
        return getattr(torch, name)


def _allocate_on_cpu() -> None:
    view = _TorchOnCpu()
    for name in _ALLOCATE_ON_CUDA:
        importlib.import_module(name).torch = view


def _patch_torch_cuda() -> None:
    # Streams/events are used for overlap and timing; on CPU they have nothing to order.
    torch.cuda.Stream = _NullStreamOrEvent
    torch.cuda.Event = _NullStreamOrEvent
    torch.cuda.current_stream = lambda *a, **k: _NullStreamOrEvent()
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()
    torch.cuda.synchronize = lambda *a, **k: None
    # Megatron places modules and buffers on torch.cuda.current_device() and calls .cuda() on tensors.
    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.Tensor.cuda = lambda self, *a, **k: self
    # RNG: Megatron's tracker (model_parallel_cuda_manual_seed) seeds and snapshots the "CUDA" generator. Mapping
    # it to the CPU default generator gives every TP/EP rank its own tracked stream, as on GPU, and identical
    # CPU initialisation on all layouts. manual_seed_all stays a no-op because torch.manual_seed calls it and
    # routing it back to torch.manual_seed would recurse.
    torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    torch.cuda.manual_seed_all = lambda seed: None
    torch.cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    torch.cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)


def _patch_tensor_type_string() -> None:
    # The optimizer, clip_grads and the distributed optimizer assert `t.type() == 'torch.cuda.FloatTensor'`
    # (and BFloat16/Half). Report CPU tensors with the CUDA type string; conversions (`t.type(dtype)`) are untouched.
    original = torch.Tensor.type

    def tensor_type(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs:
            name = original(self)
            if name.startswith("torch.") and not name.startswith("torch.cuda."):
                return "torch.cuda." + name[len("torch."):]
            return name
        return original(self, dtype, non_blocking, **kwargs)

    torch.Tensor.type = tensor_type


def _patch_megatron() -> None:
    import megatron.core.tensor_parallel.random as mp_random
    import megatron.core.transformer.moe.moe_utils as moe_utils
    import megatron.core.transformer.moe.token_dispatcher as token_dispatcher
    import megatron.core.transformer.multi_latent_attention as mla

    # The RNG tracker saves/restores the CUDA generator through these two helpers.
    mp_random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)
    mp_random._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    # moe_utils imports te_general_gemm only when TransformerEngine exists, but refers to the name regardless.
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
    # Without TE, megatron.core.extensions.transformer_engine leaves MagicMock placeholders, so MLA believes
    # HAVE_TE=True and calls isinstance(x, <MagicMock>) -> TypeError. Tell MLA the truth.
    mla.HAVE_TE = False

    class _NoTE:
        pass

    mla.TELinear = mla.TEColumnParallelLinear = _NoTE
    # The alltoall dispatcher turns split sizes into numpy only for CUDA tensors; gloo's all_to_all_single
    # rejects the CPU torch tensors left behind ("incompatible function arguments").
    original_move = token_dispatcher.maybe_move_tensor_to_cpu

    def move_tensor_to_cpu(tensor, as_numpy=False, record_stream=False):
        if as_numpy and torch.is_tensor(tensor) and not tensor.is_cuda:
            return tensor.detach().clone().numpy()
        return original_move(tensor, as_numpy=as_numpy, record_stream=record_stream)

    token_dispatcher.maybe_move_tensor_to_cpu = move_tensor_to_cpu
    _patch_distributed_optimizer_load()


def _patch_distributed_optimizer_load() -> None:
    """Two faults of DistributedOptimizer.load_state_dict when Adam is torch's (no Apex/TransformerEngine, as on
    every CPU machine); torch Adam keeps a per-parameter "step" tensor:
    (1) it puts "step" into every parameter's state, then copies each state key from the checkpoint's tensors,
        which never hold "step": KeyError on every fully_reshardable load. Copy with "step" set aside.
    (2) it assigns one shared step tensor to all parameters, which Adam then increments in place once per
        parameter: after a resume the bias correction uses step ≈ number of parameters. Give each its own copy.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original_set = DistributedOptimizer._set_main_param_and_optimizer_states
    original_load = DistributedOptimizer.load_state_dict

    def set_main_param_and_optimizer_states(self, model_param, tensors):
        group_index, group_order = self.model_param_group_index_map[model_param]
        state = self.optimizer.state[self.optimizer.param_groups[group_index]["params"][group_order]]
        step = state.pop("step", None)
        try:
            original_set(self, model_param, tensors)
        finally:
            if step is not None:
                state["step"] = step

    def load_state_dict(self, state_dict):
        original_load(self, state_dict)
        for state in self.optimizer.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()

    DistributedOptimizer._set_main_param_and_optimizer_states = set_main_param_and_optimizer_states
    DistributedOptimizer.load_state_dict = load_state_dict


def apply() -> None:
    """Patch torch.cuda and megatron-core for CPU execution; does nothing when CUDA is available."""
    global _applied
    if _applied or torch.cuda.is_available():
        return
    # megatron.core.jit.jit_fuser is torch.compile: on CPU each fused op costs inductor compiles (~20 s on the
    # first MoE step) for no speed-up at these sizes.
    from torch import _dynamo

    _dynamo.config.disable = True
    _patch_torch_cuda()
    _patch_tensor_type_string()
    _patch_megatron()
    _allocate_on_cpu()
    _applied = True
