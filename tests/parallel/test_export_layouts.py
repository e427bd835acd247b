"""save_hf at TP2, EP2, TP2+EP2, PP2 and DP2 writes the files one process writes, bit for bit, with each part of
the model sent by exactly one rank; a failure on any rank raises the same error everywhere and writes nothing."""
import json

import pytest
import torch
from safetensors.torch import load_file

from r1_megatron.models import load_hf, logits, save_hf
from tests.models import hf_fixtures
from tests.parallel.launch import torchrun

RUNS = ["tp2:dsv3", "ep2:dsv3", "tp2ep2:dsv3", "pp2:dsv3", "tp2:qwen2_tied", "pp2:qwen2_tied", "dp2:qwen2_tied"]
SHARD_BYTES = 200_000  # the tiny DeepSeek-V3 is ~2 MB: a dozen files and an index


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A 4-layer MoE/MLA DeepSeek-V3 (PP2 splits it evenly) and a tied-embedding Qwen2 (PP2's last stage holds a
    copy of the embedding that must not be exported), their single-process exports, and a training checkpoint of
    the DeepSeek-V3 with its single-process `r1-megatron export`."""
    from r1_megatron.cli import main
    from r1_megatron.runtime import ensure_parallel_state
    from r1_megatron.training.checkpoint import save_checkpoint
    from tests.parallel import training_fixtures as tf

    root = tmp_path_factory.mktemp("export")
    models = {"dsv3": hf_fixtures.deepseek_v3(num_hidden_layers=4), "qwen2_tied": hf_fixtures.qwen2(tied=True)}
    for name, hf in models.items():
        hf.save_pretrained(root / "ckpts" / name)
        save_hf(load_hf(root / "ckpts" / name), root / "single" / name, max_shard_bytes=SHARD_BYTES)
    ensure_parallel_state()
    save_checkpoint(root / "run" / "checkpoints", 1, *tf.setup(root / "ckpts" / "dsv3"))
    assert main(["export", "--ckpt", str(root / "run"), "--out", str(root / "single" / "cli")]) == 0
    return root


@pytest.fixture(scope="module")
def results(workdir):
    """One 2-rank launch for every layout and failure case (each launch costs ~8 s of start-up)."""
    return torchrun("export", workdir, nproc=2, extra=(",".join(RUNS), str(SHARD_BYTES)))


def _tensors(directory) -> dict[str, torch.Tensor]:
    return {name: t for file in sorted(directory.glob("*.safetensors")) for name, t in load_file(file).items()}


def assert_same_export(got, want) -> None:
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())
    for name in ("config.json", "model.safetensors.index.json", "generation_config.json"):
        if (want / name).is_file():
            assert json.loads((got / name).read_text()) == json.loads((want / name).read_text()), (got, name)
    for file in want.glob("*.safetensors"):  # the same tensors in the same files
        ours, theirs = load_file(got / file.name), load_file(file)
        assert ours.keys() == theirs.keys(), (got, file.name)
        for name in theirs:
            assert ours[name].dtype == theirs[name].dtype and torch.equal(ours[name], theirs[name]), (got, name)


def test_every_layout_writes_what_one_process_writes(workdir, results):
    assert len(list((workdir / "single" / "dsv3").glob("*.safetensors"))) > 5  # index-sharded
    for run in RUNS:
        layout, ckpt = run.split(":")
        assert_same_export(workdir / "out" / f"{layout}-{ckpt}", workdir / "single" / ckpt)
        owned = [result[run]["bytes_owned"] for result in results]
        total = sum(t.numel() * t.element_size() for t in _tensors(workdir / "single" / ckpt).values())
        assert sum(owned) == total, run  # every part of the model sent once, by one rank
        assert (owned[1] == 0) == (layout == "dp2"), (run, owned)  # a data-parallel replica sends nothing
    assert [result["cli"] for result in results] == [0, 0]
    assert_same_export(workdir / "out" / "cli-tp2", workdir / "single" / "cli")


def test_a_layout_export_loads_in_transformers_and_back(workdir, results):
    from transformers import AutoModelForCausalLM

    exported = workdir / "out" / "tp2ep2-dsv3"
    hf = AutoModelForCausalLM.from_pretrained(exported).float().eval()
    model = load_hf(workdir / "ckpts" / "dsv3")
    ids = torch.randint(0, 160, (2, 9), generator=torch.Generator().manual_seed(0))
    assert (hf(ids).logits - logits(model, ids)).abs().max().item() <= 1e-5
    reloaded = load_hf(exported).state_dict()
    for name, tensor in model.state_dict().items():
        if torch.is_tensor(tensor):
            assert torch.equal(tensor, reloaded[name]), name


def test_a_failure_on_any_rank_raises_the_same_error_everywhere_and_writes_nothing(workdir, results):
    errors = [result["errors"] for result in results]
    assert errors[0] == errors[1]
    kind, message = errors[0]["nan"]
    assert kind == "ValueError" and "tensor 'model.norm.weight'" in message and "NaN or Inf" in message
    assert errors[0]["disk"] == ["OSError", "No space left on device"]
    leftovers = sorted(p.name for p in (workdir / "out").iterdir() if p.name.startswith(("nan", "disk")))
    assert leftovers == []  # neither the target nor its temporary directory
