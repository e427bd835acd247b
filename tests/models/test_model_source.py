"""The run config's model section: an official-style DeepSeek-V3 checkpoint with an MTP layer loads with
model.drop_mtp, and a wrong model.path is reported as such."""
import pytest
import torch

from r1_megatron.models.hf_config import HFConfigError
from r1_megatron.models.source import ModelSourceConfig
from r1_megatron.run_config import load_run_config
from tests.models import hf_fixtures
from tests.models.test_hf_errors import edit_config, edit_tensors


@pytest.fixture(scope="module")
def mtp_checkpoint(tmp_path_factory):
    """What the official DeepSeek-V3 release has: num_nextn_predict_layers 1 and the MTP layer's weights."""
    path = tmp_path_factory.mktemp("mtp")
    hf_fixtures.deepseek_v3(num_nextn_predict_layers=0).save_pretrained(path)
    edit_config(path, num_nextn_predict_layers=1)
    edit_tensors(path, lambda t: t.update({"model.layers.3.eh_proj.weight": torch.ones(2, 2)}))
    return path


def test_mtp_checkpoint_error_names_the_run_config_key(mtp_checkpoint):
    with pytest.raises(HFConfigError, match=r"model\.drop_mtp=true in a run config"):
        ModelSourceConfig(path=str(mtp_checkpoint), dtype="fp32").build()


def test_mtp_checkpoint_loads_with_drop_mtp_from_the_command_line(mtp_checkpoint):
    cfg = load_run_config(None, [f"model.path={mtp_checkpoint}", "model.preset=null", "model.drop_mtp=true",
                                 "model.dtype=fp32"])
    assert cfg.model.drop_mtp
    assert cfg.model.build().model_config.num_layers == 3


def test_the_671b_recipe_drops_the_official_checkpoints_mtp_layer():
    cfg = load_run_config("examples/deepseek-v3-671b_r1zero_64nodes.yaml")
    assert cfg.model.drop_mtp


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "no such directory"),
    (lambda p: p, "not an HF model directory (no config.json)"),
])
def test_a_wrong_model_path_is_named(tmp_path, make, message):
    source = ModelSourceConfig(path=str(make(tmp_path)))
    with pytest.raises(FileNotFoundError, match=rf"model\.path=.*{message.replace('(', '.').replace(')', '.')}"):
        source.check_path()
