"""Tiny HF checkpoints loaded with load_hf, and the no-cache references the engine is checked against."""
from __future__ import annotations

import torch

from r1_megatron.models import load_hf, logits
from tests.models import hf_fixtures

MODELS = {"deepseek_v3": hf_fixtures.deepseek_v3, "qwen2": hf_fixtures.qwen2, "llama": hf_fixtures.llama}
# different lengths; the 7-token prompt is the longest, the 1-token one the shortest
PROMPTS = [[3, 5, 7], [11, 12, 13, 14, 15, 16, 17], [9], [20, 21, 22, 23, 24]]


def load_pair(name: str, tmp_path, **overrides):
    hf_model = MODELS[name](**overrides)
    hf_model.save_pretrained(tmp_path / name)
    return hf_model, load_hf(tmp_path / name)


def no_cache_greedy(model, prompt: list[int], num_tokens: int) -> list[int]:
    """Argmax decoding with a full forward over the whole sequence at every step (no KV cache)."""
    ids = list(prompt)
    for _ in range(num_tokens):
        ids.append(int(logits(model, torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def forward_logprobs(model, prompt: list[int], completion: list[int], temperature: float = 1.0) -> torch.Tensor:
    """The training forward's log_softmax(logits / T) of each completion token, fp64 [len(completion)]."""
    out_TV = logits(model, torch.tensor([prompt + completion]))[0].double() / temperature
    logprobs_TV = torch.log_softmax(out_TV[len(prompt) - 1:-1], dim=-1)
    return logprobs_TV.gather(1, torch.tensor(completion)[:, None])[:, 0]
