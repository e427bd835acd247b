"""TP/EP/SP/PP layouts give the single-process logits, and each rank reads only its part of the checkpoint."""
import pytest
import torch

from r1_megatron.models import load_hf, logits
from tests.models import hf_fixtures
from tests.parallel.launch import torchrun

TOL = 1e-5


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Tiny DeepSeek-V3 (4 layers so PP2 splits evenly; one with rope-halves layout) and Qwen2 checkpoints, with
    single-process reference logits."""
    root = tmp_path_factory.mktemp("layouts")
    models = {"dsv3": hf_fixtures.deepseek_v3(num_hidden_layers=4),
              "dsv3_rope_halves": hf_fixtures.deepseek_v3(num_hidden_layers=4, rope_interleave=False, seed=5),
              "qwen2": hf_fixtures.qwen2()}
    for name, hf in models.items():
        path = root / "ckpts" / name
        hf.save_pretrained(path)
        model = load_hf(path)
        ids = hf_fixtures.prompts(hf.config.vocab_size)
        torch.save({"ids": ids, "logits": [logits(model, x) for x in ids]}, root / f"{name}.ref.pt")
    return root


def checkpoint_bytes(workdir, name):
    return sum(f.stat().st_size for f in (workdir / "ckpts" / name).glob("*.safetensors"))


def test_two_rank_layouts(workdir):
    results = torchrun("logits", workdir, nproc=2, extra=("tp2,ep2,tp2ep2,pp2",))
    for rank, result in enumerate(results):
        assert len(result) == 12
        for key, value in result.items():
            assert value["max_diff"] <= TOL, (rank, key, value)
    # Sharded loading: at TP2+EP2 a rank reads about half of the DeepSeek-V3 checkpoint, never all of it.
    total = checkpoint_bytes(workdir, "dsv3")
    for result in results:
        assert 0.3 * total < result["tp2ep2/dsv3"]["bytes_read"] < 0.7 * total
        assert result["pp2/dsv3"]["bytes_read"] < 0.75 * total


def test_pipeline_and_expert_parallel_on_four_ranks(workdir):
    results = torchrun("logits", workdir, nproc=4, extra=("pp2ep2",))
    for result in results:
        for key, value in result.items():
            assert value["max_diff"] <= TOL, (key, value)
