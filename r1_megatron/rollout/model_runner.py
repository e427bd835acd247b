"""Runs the model for one scheduled step and samples each sequence's next token.

A prefill forward takes the admitted prompts right-padded to [B, T] (one row per prompt, not per completion) and
returns logits at each prompt's last token only; every completion of the prompt samples its first token from that
row, and the prompt's keys/values are copied into its siblings' slots. A decode forward takes [B, 1]: each running
sequence's last token at its own position.
"""
from __future__ import annotations

import torch

from r1_megatron.models.kv_cache import ForwardContext, KVCache, forward_context

from .sampler import SamplingBatch
from .scheduler import DecodeBatch, PrefillBatch
from .sequence import Sequence


class ModelRunner:
    def __init__(self, model, cache: KVCache, device: torch.device):
        self.model, self.cache, self.device = model, cache, device

    def run(self, batch: PrefillBatch | DecodeBatch) -> None:
        if isinstance(batch, PrefillBatch):
            self.prefill(batch.groups)
        else:
            self.decode(batch.sequences)

    def prefill(self, groups: list[list[Sequence]]) -> None:
        prompts = [group[0].prompt_ids for group in groups]
        T = max(map(len, prompts))
        ids_BT = torch.tensor([p + [0] * (T - len(p)) for p in prompts], dtype=torch.int64, device=self.device)
        positions_BT = torch.arange(T, device=self.device).expand(len(prompts), T)
        logit_index_B = torch.tensor([len(p) - 1 for p in prompts], device=self.device)
        logits_BV = self._forward(ids_BT, positions_BT, [group[0].slot for group in groups], T, logit_index_B)
        rows = [b for b, group in enumerate(groups) for _ in group]
        self._sample(logits_BV[rows], [seq for group in groups for seq in group])
        siblings = [(group[0].slot, seq.slot, len(seq.prompt_ids)) for group in groups for seq in group[1:]]
        if siblings:
            self.cache.copy_prefix(*map(list, zip(*siblings)))

    def decode(self, sequences: list[Sequence]) -> None:
        ids_B1 = torch.tensor([[seq.last_token] for seq in sequences], dtype=torch.int64, device=self.device)
        positions_B1 = torch.tensor([[seq.length - 1] for seq in sequences], device=self.device)
        kv_len = max(seq.length for seq in sequences)
        logit_index_B = torch.zeros(len(sequences), dtype=torch.int64, device=self.device)
        self._sample(self._forward(ids_B1, positions_B1, [seq.slot for seq in sequences], kv_len, logit_index_B),
                     sequences)

    def idle_forward(self) -> None:
        """A one-token forward outside the cache, for a rank with nothing to generate whose expert-parallel peers
        still do (every rank of an EP group must enter each MoE all-to-all)."""
        ids_11 = torch.zeros(1, 1, dtype=torch.int64, device=self.device)
        with torch.no_grad():
            self.model(ids_11, torch.zeros_like(ids_11), None, runtime_gather_output=True)

    def _forward(self, ids_BT, positions_BT, slots: list[int], kv_len: int, logit_index_B) -> torch.Tensor:
        ctx = ForwardContext(self.cache, torch.tensor(slots, device=self.device), positions_BT, kv_len, logit_index_B)
        with forward_context(ctx), torch.no_grad():
            logits_B1V = self.model(ids_BT, positions_BT, None, runtime_gather_output=True)
        return logits_B1V[:, 0]

    def _sample(self, logits_BV: torch.Tensor, sequences: list[Sequence]) -> None:
        batch = SamplingBatch.from_rows([seq.params for seq in sequences], [seq.seed for seq in sequences],
                                        [len(seq.token_ids) for seq in sequences], device=self.device)
        out = batch.sample(logits_BV)
        for seq, token, logprob in zip(sequences, out.tokens_B.tolist(), out.logprobs_B.tolist()):
            seq.append(token, logprob, self.cache.max_seq_len)
