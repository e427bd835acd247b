"""A preference reward model: an HF Qwen2/Llama `*ForSequenceClassification` checkpoint as a Megatron model.

The body is the causal LM's (R1GPTModel through our ModuleSpecs, loaded at the current parallel layout); the output
layer is a scalar head holding HF's `score.weight` [1, hidden], replicated over tensor parallelism (its output is
one number per position, not vocabulary-parallel logits, so nothing is gathered over TP). A sequence's score is the
head's output at the position transformers pools: the last token that is not the pad token.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

from r1_megatron.models.gpt import R1GPTModel
from r1_megatron.models.hf_checkpoint import build_from_checkpoint
from r1_megatron.models.hf_config import RewardHead, read_reward_config
from r1_megatron.models.hf_weights import sequence_classification_rules
from r1_megatron.models.logits import _last_stage_forward


class ScalarHead(torch.nn.Module):
    """HF's `score` = Linear(hidden, 1, bias=False), replicated over TP: hidden [S, B, H] -> scores [S, B, 1].

    Called where GPTModel calls its output layer, with the same signature and (output, bias) result."""

    def __init__(self, hidden_size: int, *, sequence_parallel: bool, dtype: torch.dtype):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, hidden_size, dtype=dtype))  # read from the checkpoint
        self.sequence_parallel = sequence_parallel

    def forward(self, hidden_SBH: torch.Tensor, weight=None, runtime_gather_output=None):
        if self.sequence_parallel:
            # each TP rank holds a slice of the sequence here; the replicated head scores the whole sequence on every
            # rank, so the backward splits the gradient again instead of reduce-scattering it
            hidden_SBH = gather_from_sequence_parallel_region(hidden_SBH, tensor_parallel_output_grad=False)
        return F.linear(hidden_SBH, self.weight), None


class R1RewardGPTModel(R1GPTModel):
    """R1GPTModel whose last pipeline stage ends in a ScalarHead: forward returns scores [B, T, 1].

    Megatron's GPTModel always builds a vocabulary-sized output layer on the last stage; it is replaced here during
    construction, before any weight is read, and never tied to the embedding."""

    def __init__(self, model_config, **kwargs):
        super().__init__(model_config, **kwargs)
        if self.post_process:
            self.output_layer = ScalarHead(self.config.hidden_size, sequence_parallel=self.config.sequence_parallel,
                                           dtype=self.config.params_dtype)


def pooled_index(token_ids: Sequence[int], pad_token_id: int | None) -> int:
    """The position transformers' *ForSequenceClassification reads its score at, in one unpadded sequence.

    index = max{t : ids[t] != pad_token_id} (the rightmost non-pad token, so a sequence ending in the pad token
    pools before it, padded or not); the last token when there is no pad id; 0 when every token is the pad token
    (transformers' argmax over an all-zero mask)."""
    if pad_token_id is None:
        return len(token_ids) - 1
    return max((t for t, token in enumerate(token_ids) if token != pad_token_id), default=0)


class RewardModel:
    """A loaded reward model: `score(token_ids)` -> one float per sequence. `config` is the body's ModelConfig,
    `tokenizer_dir` the checkpoint directory (its tokenizer and chat template encode the inputs)."""

    def __init__(self, model: R1RewardGPTModel, head: RewardHead, tokenizer_dir: Path):
        self.model, self.config, self.pad_token_id = model, model.model_config, head.pad_token_id
        self.tokenizer_dir = str(tokenizer_dir)

    @torch.no_grad()
    def score(self, token_ids: Sequence[Sequence[int]], *, batch_size: int = 8) -> list[float]:
        """The score of each sequence, in order. Collective over the model-parallel group: its TP/PP ranks pass the
        same sequences; data-parallel ranks pass their own. Sequences of similar length are batched together (the
        batch is right-padded; causal attention keeps padding out of the real positions)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sequences = [list(ids) for ids in token_ids]
        empty = [i for i, ids in enumerate(sequences) if not ids]
        if empty:
            raise ValueError(f"reward model score: sequence {empty[0]} is empty")
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        scores = [0.0] * len(sequences)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            for i, value in zip(batch, self._score_batch([sequences[i] for i in batch])):
                scores[i] = value
        return scores

    def _score_batch(self, sequences: list[list[int]]) -> list[float]:
        device = next(self.model.parameters()).device
        tp = parallel_state.get_tensor_model_parallel_world_size()
        width = max(map(len, sequences))
        width += (-width) % tp if self.model.config.sequence_parallel else 0
        ids_BT = torch.zeros(len(sequences), width, dtype=torch.long, device=device)
        for row, ids in enumerate(sequences):
            ids_BT[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        index_B = torch.tensor([pooled_index(ids, self.pad_token_id) for ids in sequences], device=device)
        out_BT1 = _last_stage_forward(self.model, ids_BT)
        if parallel_state.is_pipeline_last_stage():
            score_B = out_BT1[torch.arange(len(sequences), device=device), index_B, 0].float()
        else:
            score_B = torch.empty(len(sequences), dtype=torch.float32, device=device)
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            torch.distributed.broadcast(score_B, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                                        group=parallel_state.get_pipeline_model_parallel_group())
        return score_B.tolist()


def load_reward_model(hf_dir: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> RewardModel:
    """This rank's part of the reward model in the HF directory `hf_dir`, at the current parallel layout
    (r1_megatron.runtime.initialize_parallel first; collective). Frozen and in eval mode."""
    directory = Path(hf_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: reward model directory does not exist")
    config, layout, head = read_reward_config(directory)
    rules = {rule.megatron: rule for rule in sequence_classification_rules(config, layout)}
    model = build_from_checkpoint(directory, config, layout, rules, dtype=dtype, model_class=R1RewardGPTModel)
    model.requires_grad_(False)
    model.eval()
    return RewardModel(model, head, directory)
