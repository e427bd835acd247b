"""TEMPORARY (integration scaffold until the kernel branch lands)."""
import torch


def decode_attention(q_BND, k_cache_PSGD, v_cache_PSGE, block_table_BM, seq_lens_B, softmax_scale, num_splits=None):
    B, N, D = q_BND.shape
    S, G = k_cache_PSGD.shape[1], k_cache_PSGD.shape[2]
    M = block_table_BM.shape[1]
    k = k_cache_PSGD[block_table_BM.long()].flatten(1, 2)  # [B, M*S, G, D]
    v = v_cache_PSGE[block_table_BM.long()].flatten(1, 2)
    k = k.repeat_interleave(N // G, dim=2).float()
    v = v.repeat_interleave(N // G, dim=2).float()
    scores = torch.einsum("bnd,bknd->bnk", q_BND.float(), k) * softmax_scale
    valid = torch.arange(M * S, device=q_BND.device)[None] < seq_lens_B[:, None]
    scores = scores.masked_fill(~valid[:, None], float("-inf"))
    return torch.einsum("bnk,bkne->bne", scores.softmax(-1), v).to(q_BND.dtype)
