"""MLA that caches its compressed latent in generation and attends in the absorbed form (DeepSeek-V2 §2.1.2).

Megatron's MLASelfAttention expands the compressed kv c [T, kv_lora_rank] into per-head keys and values before
core attention, so a KV cache behind core attention holds heads · (qk_nope + qk_rope + v) values per token. Since
head h's key is k_h = [W_UK_h c ; k_rope] and its value v_h = W_UV_h c (W_UK_h [qk_nope, r], W_UV_h [v, r], r =
kv_lora_rank, k_rope shared by all heads), the up projections move onto the query and the output:

    q_h · k_h = (W_UK_hᵀ q_nope_h) · c + q_rope_h · k_rope      softmax over the context, weights p_h
    o_h = Σ_t p_h[t] W_UV_h c_t = W_UV_h (Σ_t p_h[t] c_t)

so every head attends over one shared key [c ; k_rope] (r + qk_rope values per token) whose first r channels are
also its value, and the cache holds only that. The scores are the expanded ones, so the softmax scale is the
parent's (YaRN mscale² / sqrt(qk_nope + qk_rope)).

Only generation forwards with the latent cache take this path; every other forward (training, packed, the
expanded cache, the engine's idle forwards) is MLASelfAttention's own.
"""
from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.transformer.multi_latent_attention import MLASelfAttention

from r1_megatron.models.kv_cache import ForwardContext, active_context


class LatentCacheMLASelfAttention(MLASelfAttention):
    """MLASelfAttention whose generation forwards cache [c ; k_rope] per token and decode absorbed."""

    caches_latent = True  # rollout/cache_config.py sizes the cache from this

    def forward(self, hidden_states, attention_mask, *args, **kwargs):
        ctx = active_context()
        if ctx is None or not ctx.cache.mla_latent:
            return super().forward(hidden_states, attention_mask, *args, **kwargs)
        return self._absorbed_forward(ctx, hidden_states)

    def _absorbed_forward(self, ctx: ForwardContext, hidden_N1H: torch.Tensor):
        """hidden [N, 1, hidden] -> (linear_proj output [N, 1, hidden], bias), the parent's output up to rounding.

        q_latent[n, h] = W_UK_hᵀ q_nope[n, h]                  [N, 1, h, r]
        query = [q_latent ; q_rope] [N, 1, h, r + R],  key = [c ; k_rope] [N, 1, 1, r + R],  value = key[..., :r]
        out[n, h] = W_UV_h attn[n, h]                          [N, 1, h, v] -> linear_proj (row-parallel)"""
        r = self.config.kv_lora_rank
        heads = self.num_attention_heads_per_partition
        q_nope_N1hd, q_rope_N1hR, c_N1r, k_rope_N11R = self._latent_query_key(hidden_N1H)
        w_uk_hdr, w_uv_hvr = self._up_projections()
        q_latent_N1hr = torch.einsum("nbhd,hdr->nbhr", q_nope_N1hd, w_uk_hdr)
        query_N1hX = torch.cat([q_latent_N1hr, q_rope_N1hR], dim=-1)
        key_N11X = torch.cat([c_N1r[:, :, None], k_rope_N11R], dim=-1)
        attn_N1Y = ctx.attend(self.layer_number, query_N1hX, key_N11X, None, self.softmax_scale, value_dim=r)
        attn_N1hr = attn_N1Y.view(attn_N1Y.shape[0], 1, heads, r)
        out_N1hv = torch.einsum("nbhr,hvr->nbhv", attn_N1hr, w_uv_hvr)
        return self.linear_proj(out_N1hv.reshape(out_N1hv.shape[0], 1, -1))

    def _latent_query_key(self, hidden_N1H: torch.Tensor):
        """This rank's heads' q_nope [N, 1, h, qk_nope] and rotated q_rope [N, 1, h, R]; the normalised latent c
        [N, 1, r] and rotated shared rope key [N, 1, 1, R], whole on every TP rank (replicated down projections).
        As MLASelfAttention.get_query_key_value_tensors without sequence parallelism (off in generation)."""
        cfg = self.config
        if cfg.q_lora_rank is None:
            q_N1Q, _ = self.linear_q_proj(hidden_N1H)
        else:
            q_compressed_N1q, _ = self.linear_q_down_proj(hidden_N1H)
            q_N1Q, _ = self.linear_q_up_proj(self.q_layernorm(q_compressed_N1q))
        q_N1hD = q_N1Q.view(*q_N1Q.shape[:2], self.num_attention_heads_per_partition, self.q_head_dim)
        q_nope_N1hd, q_rope_N1hR = torch.split(q_N1hD, [cfg.qk_head_dim, cfg.qk_pos_emb_head_dim], dim=-1)
        kv_N1X, _ = self.linear_kv_down_proj(hidden_N1H)
        c_N1r, k_rope_N1R = torch.split(kv_N1X, [cfg.kv_lora_rank, cfg.qk_pos_emb_head_dim], dim=-1)
        # the rope hook (models/gpt.py) gives each token's own position; YaRN also returns its rotary mscale
        freqs_N11R, mscale = self._rotary(hidden_N1H.shape[0])
        rotate = dict(config=cfg, mscale=mscale, cp_group=self.pg_collection.cp)
        return (q_nope_N1hd, apply_rotary_pos_emb(q_rope_N1hR, freqs_N11R, **rotate), self.kv_layernorm(c_N1r),
                apply_rotary_pos_emb(k_rope_N1R[:, :, None], freqs_N11R, **rotate))

    def _rotary(self, num_tokens: int):
        if self.config.rope_type == "rope":
            return self.rotary_pos_emb(num_tokens), 1.0
        return self.rotary_pos_emb(num_tokens)

    def _up_projections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK [h, qk_nope, r] and W_UV [h, v, r] of this rank's heads: views of linear_kv_up_proj's live weight
        (column-parallel, [h · (qk_nope + v), r]), read every forward because the trainer updates it."""
        cfg = self.config
        weight_hXr = self.linear_kv_up_proj.weight.view(self.num_attention_heads_per_partition,
                                                        cfg.qk_head_dim + cfg.v_head_dim, cfg.kv_lora_rank)
        return torch.split(weight_hXr, [cfg.qk_head_dim, cfg.v_head_dim], dim=1)
