"""`r1-megatron forward`: build a preset model (default: the tiny MoE), run forward + backward on random tokens,
and print the next-token loss. A real end-to-end check of the Megatron stack on this machine."""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F


def main(args) -> int:
    from r1_megatron.models import build_model, preset
    from r1_megatron.models.logits import position_ids_like
    from r1_megatron.runtime import describe, ensure_parallel_state, seed_everything

    start = time.perf_counter()
    layout = ensure_parallel_state()
    seed_everything(args.seed)
    config = preset(args.preset)
    model = build_model(config)
    params = sum(p.numel() for p in model.parameters())
    print(f"model {args.preset}: {config.architecture.value}, {params / 1e6:.3f}M parameters, layout {describe(layout)}")
    g = torch.Generator().manual_seed(args.seed)
    ids_BT = torch.randint(0, config.vocab_size, (args.batch, args.seq_len + 1), generator=g)
    logits_BTV = model(ids_BT[:, :-1], position_ids_like(ids_BT[:, :-1]), attention_mask=None)
    loss = F.cross_entropy(logits_BTV.float().flatten(0, 1), ids_BT[:, 1:].flatten())
    loss.backward()
    grad_norm = math.sqrt(sum(p.grad.float().pow(2).sum().item() for p in model.parameters() if p.grad is not None))
    print(f"loss {loss.item():.4f} (uniform guess: ln V = {math.log(config.vocab_size):.4f}), "
          f"grad norm {grad_norm:.4f}, {time.perf_counter() - start:.1f} s")
    return 0 if math.isfinite(loss.item()) and math.isfinite(grad_norm) else 1
