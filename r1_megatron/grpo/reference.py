"""The frozen reference policy π_ref of the KL term: a second model of the same architecture and layout, set
from the policy at the start and every `ref_refresh_steps` steps (R1 refreshes it every 400 steps)."""
from __future__ import annotations

import contextlib

import torch

from r1_megatron.models import build_model
from r1_megatron.training.step import unwrap

from .logprob_pass import forward_logprobs


class ReferenceModel:
    def __init__(self, policy, *, on_host: bool = False):
        """on_host: keep the weights in host memory between uses (GPU memory goes to generation and training)."""
        core = unwrap(policy)
        self.model = build_model(core.model_config, dtype=core.config.params_dtype)
        self.model.requires_grad_(False)
        self.on_host = on_host and torch.cuda.is_available()
        self.refresh_from(policy)

    @torch.no_grad()
    def refresh_from(self, policy) -> None:
        """π_ref ← π_θ (weights and buffers such as the routers' expert bias)."""
        with self._on_device():
            self.model.load_state_dict(unwrap(policy).state_dict())

    def logprobs(self, batches: list[dict], temperature: float) -> list[torch.Tensor]:
        with self._on_device():
            return forward_logprobs(self.model, batches, temperature)

    @contextlib.contextmanager
    def _on_device(self):
        if self.on_host:
            self.model.cuda(torch.cuda.current_device())
        try:
            yield
        finally:
            if self.on_host:
                self.model.cpu()
