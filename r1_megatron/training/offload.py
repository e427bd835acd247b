"""Keep the optimizer state and gradient buffers in host memory while the engine generates (GPU memory then
goes to the KV cache), and bring them back for the train step: `engine.generating(offload=HostOffload(ddp, opt))`.

Only what generation does not read moves: Adam's moments, the fp32 main copies of bf16 parameters (mixed
precision / distributed optimizer) and the gradient buffers. Parameters the model itself computes with never
move, so the engine still reads the trainer's tensors. Where everything already lives on the host (CPU runs)
this is a no-op.
"""
from __future__ import annotations

import torch


class HostOffload:
    def __init__(self, ddp_model, optimizer):
        self.ddp_model, self.optimizer = ddp_model, optimizer

    def _optimizer_tensors(self):
        """(holder, key) of every optimizer-owned tensor: state entries and main params not shared with the model."""
        model_ptrs = {p.data_ptr() for p in self.ddp_model.parameters()}
        for inner in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            torch_optimizer = getattr(inner, "optimizer", None)
            if torch_optimizer is None:
                continue
            for state in torch_optimizer.state.values():
                yield from ((state, key) for key, value in state.items() if torch.is_tensor(value))
            for group in torch_optimizer.param_groups:
                params = group["params"]
                yield from ((params, i) for i, p in enumerate(params) if p.data_ptr() not in model_ptrs)

    def _on_gpu(self) -> bool:
        return any(p.is_cuda for p in self.ddp_model.parameters())

    def _move_optimizer_tensors(self, device) -> None:
        for holder, key in self._optimizer_tensors():
            if isinstance(holder, list):  # a main parameter: move its data, keep the Parameter object
                holder[key].data = holder[key].data.to(device)
            else:
                holder[key] = holder[key].to(device)

    def __enter__(self):
        if self._on_gpu():
            self._move_optimizer_tensors("cpu")
            self.ddp_model.offload_grad_buffers()
        return self

    def __exit__(self, *exc):
        if self._on_gpu():
            self._move_optimizer_tensors(torch.device("cuda", torch.cuda.current_device()))
            self.ddp_model.restore_grad_buffers()
