"""Official DeepSeek-V3 checkpoints store linear weights as block-scaled fp8 (e4m3 + `weight_scale_inv`);
load_hf dequantises them: logits equal transformers' on the dequantised weights."""
import json

import torch
from safetensors.torch import load_file, save_file

from r1_megatron.models import load_hf, logits
from tests.models import hf_fixtures

BLOCK = (16, 16)  # small blocks so that several of them, and ragged edges, occur in tiny matrices


def quantize_blockwise(w: torch.Tensor):
    """(e4m3 weight, scale_inv) with w ≈ fp8 · scale_inv per [16, 16] block, as DeepSeek's release does."""
    rows, cols = w.shape
    bm, bn = BLOCK
    gr, gc = -(-rows // bm), -(-cols // bn)
    padded = torch.zeros(gr * bm, gc * bn)
    padded[:rows, :cols] = w
    blocks = padded.view(gr, bm, gc, bn)
    scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / 448.0
    q = (blocks / scale[:, None, :, None]).view(gr * bm, gc * bn)[:rows, :cols].to(torch.float8_e4m3fn)
    return q, scale


def test_fp8_block_scaled_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    fp8_dir, ref_dir = tmp_path / "fp8", tmp_path / "dequantised"
    hf_fixtures.deepseek_v3().save_pretrained(fp8_dir)
    hf_fixtures.deepseek_v3().save_pretrained(ref_dir)
    tensors = load_file(fp8_dir / "model.safetensors")
    stored, dequantised = dict(tensors), dict(tensors)
    for name, w in tensors.items():
        if name.endswith("proj.weight") and ".layers." in name:
            q, scale_inv = quantize_blockwise(w.float())
            stored[name], stored[f"{name}_scale_inv"] = q, scale_inv
            expand = scale_inv.repeat_interleave(BLOCK[0], 0)[: w.shape[0]].repeat_interleave(BLOCK[1], 1)
            dequantised[name] = q.float() * expand[:, : w.shape[1]]
    assert sum(t.dtype == torch.float8_e4m3fn for t in stored.values()) > 40
    save_file(stored, fp8_dir / "model.safetensors", metadata={"format": "pt"})
    save_file(dequantised, ref_dir / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((fp8_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": list(BLOCK)}
    (fp8_dir / "config.json").write_text(json.dumps(config))

    reference = AutoModelForCausalLM.from_pretrained(ref_dir).float().eval()  # transformers on dequantised weights
    model = load_hf(fp8_dir)
    for ids in hf_fixtures.prompts(reference.config.vocab_size):
        assert (logits(model, ids) - hf_fixtures.hf_logits(reference, ids)).abs().max().item() <= 1e-5
