"""The Megatron GPTModel that carries its ModelConfig, and `build_model` for this rank's pipeline stage."""
from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.multi_latent_attention import MultiLatentAttention

from r1_megatron.models.config import ModelConfig, RopeScaling, to_transformer_config
from r1_megatron.models.kv_cache import active_context
from r1_megatron.models.packed import active_positions, rotary_at
from r1_megatron.models.specs import block_spec
from r1_megatron.runtime import ParallelConfig, ensure_parallel_state


class R1GPTModel(GPTModel):
    """GPTModel that knows its architecture config (for HF export, generation and logging) and applies
    Llama-3 rope scaling with all four of its parameters: megatron-core 0.16.1's `rope_scaling` flag passes only
    the factor and hard-codes low/high frequency factors and the original context length.

    Generation forwards (models/kv_cache.py) change two things through forward hooks, which are inert otherwise:
    every rotary embedding returns each token's own position's frequencies, and the output layer computes
    logits only at one position per row. Packed training forwards (models/packed.py, `packed_rotary`) use the
    first hook alone: positions restart at each packed sequence."""

    def __init__(self, model_config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.model_config = model_config
        rope = model_config.rope
        if rope.scaling is RopeScaling.LLAMA3:
            # Replaces the unscaled inv_freq before the first forward (RotaryEmbedding.forward is lru_cached).
            emb = self.rotary_pos_emb
            emb.inv_freq = emb._apply_scaling(emb.inv_freq, factor=rope.factor, low_freq_factor=rope.low_freq_factor,
                                              high_freq_factor=rope.high_freq_factor,
                                              original_max_position_embeddings=rope.original_max_position_embeddings)
        for module in self.modules():
            if isinstance(module, (GPTModel, MultiLatentAttention)) and hasattr(module, "rotary_pos_emb"):
                module.rotary_pos_emb.register_forward_hook(_rotary_per_token)
        if self.post_process:
            self.output_layer.register_forward_pre_hook(_only_logit_positions, with_kwargs=True)


def _rotary_per_token(rope, args, output):
    """The frequencies of each token's own position, [T, B, 1, D], in a generation forward or a packed forward
    (Megatron computes 0..T-1 for one shared sequence; apply_rotary_pos_emb broadcasts over B either way)."""
    ctx = active_context()
    if ctx is not None:
        # lru-cached in Megatron: one table for the whole generation; decode positions reach past this forward's T
        table = rope.forward(ctx.max_positions)
        return _per_token(table, ctx.positions_N[None])
    positions_BT = active_positions()
    if positions_BT is None:
        return None
    return _per_token(output, positions_BT)  # Megatron's own table covers 0..T-1, and packed positions are < T


def _per_token(table, positions_BT):
    if isinstance(table, tuple):  # YaRN returns (emb, mscale)
        return (rotary_at(table[0], positions_BT),) + tuple(table[1:])
    return rotary_at(table, positions_BT)


def _only_logit_positions(output_layer, args, kwargs):
    """In a generation forward: hidden states of the flat row [N, 1, H] -> [1, R, H] at ctx.logit_index_R, so a
    prefill chunk of many tokens projects only its last token onto the vocabulary."""
    ctx = active_context()
    if ctx is None:
        return None
    hidden_N1H, *rest = args
    return (hidden_N1H[ctx.logit_index_R, 0][None], *rest), kwargs


def build_model(model_config: ModelConfig, *, dtype: torch.dtype = torch.float32,
                parallel: ParallelConfig | None = None, model_class: type[R1GPTModel] = R1GPTModel) -> R1GPTModel:
    """This rank's part of the model (its pipeline stage, tensor and expert shards), randomly initialised.
    `model_class`: an R1GPTModel subclass with another head (models/reward_model.py); default R1GPTModel."""
    parallel = parallel or ensure_parallel_state()
    tcfg = to_transformer_config(model_config, parallel, dtype)
    model = model_class(
        model_config, config=tcfg, transformer_layer_spec=block_spec(model_config, tcfg),
        vocab_size=model_config.vocab_size, max_sequence_length=model_config.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(), post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=model_config.tie_word_embeddings,
        position_embedding_type="rope", rotary_base=model_config.rope.theta, rope_scaling=False)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model
