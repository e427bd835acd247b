"""Training gradients equal transformers' autograd on the same weights (the forward parity tests cannot see a
backward-only bug; the layout tests compare layouts with each other, not with an independent reference)."""
import torch
import torch.nn.functional as F

from r1_megatron.models import load_hf
from r1_megatron.models.logits import position_ids_like
from tests.models import hf_fixtures


def _next_token_loss(logits_BTV, ids_BT):
    V = logits_BTV.shape[-1]
    return F.cross_entropy(logits_BTV[:, :-1].reshape(-1, V), ids_BT[:, 1:].reshape(-1))


def test_deepseek_v3_gradients_match_transformers(tmp_path):
    hf = hf_fixtures.deepseek_v3()
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf(tmp_path / "hf")
    ids_BT = torch.randint(0, hf.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    hf.train()
    _next_token_loss(hf(ids_BT).logits, ids_BT).backward()
    ours.train()
    _next_token_loss(ours(ids_BT, position_ids_like(ids_BT), None, runtime_gather_output=True), ids_BT).backward()
    theirs, mine = dict(hf.named_parameters()), dict(ours.named_parameters())
    pairs = [("lm_head.weight", "output_layer.weight"),
             ("model.layers.0.mlp.down_proj.weight", "decoder.layers.0.mlp.linear_fc2.weight"),
             ("model.layers.1.mlp.gate.weight", "decoder.layers.1.mlp.router.weight"),
             ("model.layers.1.mlp.shared_experts.down_proj.weight",
              "decoder.layers.1.mlp.shared_experts.linear_fc2.weight"),
             ("model.layers.1.self_attn.o_proj.weight", "decoder.layers.1.self_attention.linear_proj.weight")]
    pairs += [(("model.layers.1.mlp.experts.down_proj", e), f"decoder.layers.1.mlp.experts.local_experts.{e}."
               "linear_fc2.weight") for e in range(hf.config.n_routed_experts)]
    for hf_name, our_name in pairs:
        g_hf = theirs[hf_name[0]].grad[hf_name[1]] if isinstance(hf_name, tuple) else theirs[hf_name].grad
        g_ours = mine[our_name].grad
        assert (g_hf - g_ours).abs().max() <= 1e-6 * max(1.0, g_hf.abs().max().item()), (hf_name, our_name)
    assert any(mine[o].grad.abs().sum() > 0 for _, o in pairs[5:])  # experts really received gradient
