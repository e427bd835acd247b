"""The engine on a GPU: the Triton decode kernel and CUDA-graph decode give the tokens of no-cache decoding and
of eager decoding (tiny checkpoints, fp32)."""
import pytest
import torch

from r1_megatron.rollout import CacheConfig, Engine, SamplingParams
from r1_megatron.rollout.decode_graphs import DecodeGraphs, GraphConfig
from tests.rollout.engine_fixtures import PROMPTS, load_pair, no_cache_greedy

NEW = 8
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_suite.sh)")]


@pytest.fixture(scope="module", params=["qwen2", "deepseek_v3"])
def model(request, tmp_path_factory):
    return load_pair(request.param, tmp_path_factory.mktemp("hf"))[1].cuda()


def test_greedy_on_gpu_equals_no_cache_decoding(model):
    engine = Engine(model, max_batch_size=4, max_seq_len=32, cache=CacheConfig(block_size=4, num_blocks=20))
    out = engine.generate(PROMPTS, SamplingParams(n=2, temperature=0, max_new_tokens=NEW))
    for c in out:
        assert c.token_ids == no_cache_greedy(model, PROMPTS[c.prompt_index], NEW)


def test_cuda_graph_decode_equals_eager_decode(model):
    params = SamplingParams(n=3, temperature=0.8, top_p=0.95, max_new_tokens=NEW, seed=7)
    eager = Engine(model, max_batch_size=8, max_seq_len=32, graphs=GraphConfig(enabled=False)).generate(
        PROMPTS, params)
    engine = Engine(model, max_batch_size=8, max_seq_len=32)
    with engine.generating():
        graphed = engine.generate(PROMPTS, params)
        graphs = engine.static_decode
        assert isinstance(graphs, DecodeGraphs) and graphs.steps > 0
        if model.model_config.moe is None:
            assert graphs.failed is None and graphs.graphs  # dense models capture
    for a, b in zip(graphed, eager):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def moe_model(tmp_path_factory):
    return load_pair("deepseek_v3", tmp_path_factory.mktemp("hf_moe"))[1].cuda()


def test_recorded_routing_with_graph_decode_equals_eager(moe_model):
    """Routing replay's record (models/routing_replay.py) through the decode graphs, when an MoE model captures
    them: the recorder's buffer copy is part of the graph, so every replayed step writes its experts too."""
    model = moe_model
    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=NEW, seed=7)
    eager = Engine(model, max_batch_size=8, max_seq_len=32, graphs=GraphConfig(enabled=False),
                   record_routing=True).generate(PROMPTS, params)
    graphed = Engine(model, max_batch_size=8, max_seq_len=32, record_routing=True).generate(PROMPTS, params)
    for a, b in zip(graphed, eager):
        assert a.token_ids == b.token_ids
        assert a.routing.shape == (len(PROMPTS[a.prompt_index]) + NEW - 1, 2, 2)
        assert torch.equal(a.routing, b.routing)
