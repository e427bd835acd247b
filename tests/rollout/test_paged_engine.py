"""The paged KV cache under pressure: chunked prefill, preemption by a tiny cache, samples sharing their prompt's
blocks; greedy tokens against no-cache decoding and sampled ones against an unconstrained engine (CPU, fp32)."""
import pytest
import torch

from r1_megatron.rollout import CacheConfig, Engine, SamplingParams
from r1_megatron.rollout.decode_graphs import GraphConfig, StaticDecode

from .engine_fixtures import PROMPTS, load_pair, no_cache_greedy

NEW_TOKENS = 6
LONG_PROMPT = list(range(30, 49))  # 19 tokens: several blocks, several chunks


@pytest.fixture(scope="module", params=["qwen2", "llama", "deepseek_v3"])
def model(request, tmp_path_factory):
    return load_pair(request.param, tmp_path_factory.mktemp("hf"))[1]


def _greedy(engine, n=2):
    prompts = PROMPTS + [LONG_PROMPT]
    return prompts, engine.generate(prompts, SamplingParams(n=n, temperature=0, max_new_tokens=NEW_TOKENS))


def _check_no_cache(model, prompts, out):
    for c in out:
        assert c.token_ids == no_cache_greedy(model, prompts[c.prompt_index], NEW_TOKENS), c.prompt_index


def test_chunked_prefill_and_preemption_keep_greedy_tokens(model):
    # 3-token budget: every prompt longer than 3 is prefilled over several steps, interleaved with decodes;
    # 14 usable blocks of 2 positions for 5 prompts x 2 samples: sequences are preempted and recomputed
    engine = Engine(model, max_batch_size=4, max_seq_len=26,
                    cache=CacheConfig(block_size=2, num_blocks=15, max_tokens_per_step=3))
    prompts, out = _greedy(engine)
    assert engine.stats.preemptions > 0
    _check_no_cache(model, prompts, out)


def test_the_samples_of_a_prompt_share_its_blocks(model):
    engine = Engine(model, max_batch_size=4, max_seq_len=32, cache=CacheConfig(block_size=4))
    out = engine.generate([LONG_PROMPT], SamplingParams(n=4, temperature=0, max_new_tokens=3))
    assert engine.stats.prefill_tokens == len(LONG_PROMPT)  # prefilled once, not once per sample
    # 22 positions in blocks of 4: the 5 prompt blocks shared, 3 copies of the partial 5th block (its last
    # writer keeps it), one fresh 6th block per sample; unshared, 4 samples would hold 4 x 6 = 24 blocks
    assert engine.stats.peak_blocks_used == 5 + 3 + 4
    assert engine.stats.peak_running == 4 and engine.stats.preemptions == 0
    want = no_cache_greedy(model, LONG_PROMPT, 3)
    assert all(c.token_ids == want for c in out)


def test_sampling_under_preemption_equals_an_unconstrained_engine(model):
    params = SamplingParams(n=3, temperature=0.8, top_p=0.9, max_new_tokens=NEW_TOKENS, seed=5)
    roomy = Engine(model, max_batch_size=8, max_seq_len=14).generate(PROMPTS, params)
    # 8 usable blocks of 2 positions: fewer than 3 running sequences of up to 13 tokens need
    tight = Engine(model, max_batch_size=3, max_seq_len=14, cache=CacheConfig(block_size=2, num_blocks=9,
                                                                          max_tokens_per_step=4))
    out = tight.generate(PROMPTS, params)
    assert tight.stats.preemptions > 0
    assert [c.token_ids for c in out] == [c.token_ids for c in roomy]
    for a, b in zip(out, roomy):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)


def test_cache_settings_are_checked(model):
    with pytest.raises(ValueError, match="cache.block_size must be an int >= 1"):
        CacheConfig(block_size=0)
    with pytest.raises(ValueError, match="num_blocks or memory_fraction, not both"):
        CacheConfig(num_blocks=8, memory_fraction=0.5)
    with pytest.raises(ValueError, match="cache.memory_fraction must be in"):
        CacheConfig(memory_fraction=1.5)
    with pytest.raises(ValueError, match="cannot hold one sequence of max_seq_len=32"):
        Engine(model, max_batch_size=2, max_seq_len=32, cache=CacheConfig(block_size=4, num_blocks=8))


def test_memory_fraction_sizes_the_pool_from_the_bytes_per_token(model):
    from r1_megatron.rollout.cache_config import kv_bytes_per_token

    engine = Engine(model, max_batch_size=2, max_seq_len=16, cache=CacheConfig(memory_fraction=1e-5))
    with engine.generating():
        engine.generate([[1, 2, 3]], SamplingParams(temperature=0, max_new_tokens=2))
        per_token = engine.cache.nbytes() / engine.cache.capacity_tokens
    assert per_token == kv_bytes_per_token(engine.model)
    assert engine.num_blocks >= 2


def test_the_static_bucketed_decode_path_gives_the_eager_tokens(model):
    """What CUDA-graph decode replays, run without capture on CPU: inputs copied into static buffers, the batch
    padded to its bucket with rows on the scratch block, the full-width block table."""
    params = SamplingParams(n=2, temperature=0.9, max_new_tokens=NEW_TOKENS, seed=3)
    eager = Engine(model, max_batch_size=6, max_seq_len=32, graphs=GraphConfig(enabled=False))
    static = Engine(model, max_batch_size=6, max_seq_len=32, graphs=GraphConfig(batch_sizes=(1, 4), capture=False))
    with static.generating():
        assert isinstance(static.static_decode, StaticDecode) and static.static_decode.buckets == [1, 4]
        out = static.generate(PROMPTS, params)  # 6 rows decode eagerly (> 4); 2 rows in bucket 4, padded
        assert static.static_decode.steps > 0
    for a, b in zip(out, eager.generate(PROMPTS, params)):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)
    with Engine(model, max_batch_size=2, max_seq_len=8).generating() as cpu:
        assert cpu.static_decode is None  # no CUDA: eager decode


def test_graph_settings_are_checked():
    with pytest.raises(ValueError, match="graphs.batch_sizes must be increasing ints >= 1"):
        GraphConfig(batch_sizes=(4, 2))
