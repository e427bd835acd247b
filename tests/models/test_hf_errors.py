"""Bad checkpoints and configs fail with errors that name the file and the tensor or field."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from r1_megatron.models import CheckpointError, HFConfigError, MLAConfig, ModelConfig, MoEConfig, load_hf
from tests.models import hf_fixtures


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen") / "hf"
    hf_fixtures.qwen2().save_pretrained(path)
    return path


@pytest.fixture
def checkpoint(qwen_dir, tmp_path):
    """A private copy of the tiny Qwen2 checkpoint to break."""
    return shutil.copytree(qwen_dir, tmp_path / "ckpt")


def edit_config(directory, **changes):
    file = directory / "config.json"
    config = json.loads(file.read_text())
    config.update(changes)
    file.write_text(json.dumps(config))


def edit_tensors(directory, edit):
    file = directory / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_missing_tensor(checkpoint):
    edit_tensors(checkpoint, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"ckpt: tensor 'model\.layers\.1\.mlp\.up_proj\.weight'.*missing"):
        load_hf(checkpoint)


def test_shape_mismatch(checkpoint):
    edit_tensors(checkpoint, lambda t: t.update({"model.norm.weight": torch.ones(95)}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor model\.norm\.weight gives shape \(95,\) "
                                              r"but Megatron 'decoder\.final_layernorm\.weight' is \(96,\)"):
        load_hf(checkpoint)


def test_unexpected_tensor(checkpoint):
    edit_tensors(checkpoint, lambda t: t.update({"model.layers.0.mlp.extra.weight": torch.ones(3)}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: 1 tensor\(s\).*model\.layers\.0\.mlp\.extra"):
        load_hf(checkpoint)


@pytest.mark.parametrize("changes, field", [
    (dict(architectures=["GPT2LMHeadModel"]), "architectures"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(use_sliding_window=True), "use_sliding_window"),
    (dict(rope_parameters=dict(rope_type="dynamic", rope_theta=1e4, factor=2.0)), "rope_parameters"),
    (dict(quantization_config=dict(quant_method="gptq")), "quantization_config"),
])
def test_unsupported_config_field(checkpoint, changes, field):
    edit_config(checkpoint, **changes)
    with pytest.raises(HFConfigError, match=rf"ckpt/config\.json: field '{field}'"):
        load_hf(checkpoint)


def test_missing_required_field(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    del config["hidden_size"]
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(HFConfigError, match=r"config\.json: required field 'hidden_size' is missing"):
        load_hf(checkpoint)


def test_invalid_json(checkpoint):
    (checkpoint / "config.json").write_text('{\n  "vocab_size": 150,\n  oops\n}')
    with pytest.raises(HFConfigError, match=r"config\.json: invalid JSON at line 3"):
        load_hf(checkpoint)


def test_missing_files(checkpoint):
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"ckpt: no \*\.safetensors files"):
        load_hf(checkpoint)
    (checkpoint / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"ckpt/config\.json: no config\.json"):
        load_hf(checkpoint)


def test_mtp_is_rejected_unless_dropped(tmp_path):
    hf = hf_fixtures.deepseek_v3(num_nextn_predict_layers=0)
    hf.save_pretrained(tmp_path)
    edit_config(tmp_path, num_nextn_predict_layers=1)
    with pytest.raises(HFConfigError, match=r"field 'num_nextn_predict_layers' = 1: multi-token prediction"):
        load_hf(tmp_path)
    # An MTP layer's weights (layer index == num_hidden_layers) are left out with drop_mtp=True.
    edit_tensors(tmp_path, lambda t: t.update({"model.layers.3.eh_proj.weight": torch.ones(2, 2)}))
    model = load_hf(tmp_path, drop_mtp=True)
    assert model.model_config.mtp_layers == 0


def test_model_config_validation_names_the_field():
    base = dict(architecture="deepseek_v3", vocab_size=32, hidden_size=32, num_layers=2, num_attention_heads=2,
                ffn_hidden_size=64, mla=MLAConfig(kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8))
    with pytest.raises(ValueError, match="mtp_layers=1: multi-token prediction"):
        ModelConfig(**base, mtp_layers=1)
    with pytest.raises(ValueError, match="ModelConfig.hidden_size must be a positive integer, got 0"):
        ModelConfig(**{**base, "hidden_size": 0})
    with pytest.raises(ValueError, match="top_k=5 exceeds num_experts=4"):
        MoEConfig(num_experts=4, top_k=5, ffn_hidden_size=8)
    with pytest.raises(ValueError, match="unknown model preset 'gpt-5'"):
        from r1_megatron.models import preset
        preset("gpt-5")
