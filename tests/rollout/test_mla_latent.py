"""MLA's latent KV cache with absorbed attention (models/mla.py) against the expanded per-head cache, no-cache
decoding and transformers' generate, and its bytes (CPU, fp32)."""
import pytest
import torch

from r1_megatron.models.mla import LatentCacheMLASelfAttention
from r1_megatron.rollout import Engine, SamplingParams
from r1_megatron.rollout.cache_config import CacheConfig, kv_bytes_per_token, layer_kv_bytes_per_token
from tests.models import hf_fixtures

from .engine_fixtures import PROMPTS, load_pair, no_cache_greedy

VARIANTS = {
    "q_lora-yarn": dict(),
    # mscale != mscale_all_dim: YaRN's rotary mscale is not 1, so a path that dropped it would differ
    "no_q_lora-yarn_mscale": dict(q_lora_rank=None, rope_parameters=dict(hf_fixtures.YARN, mscale=0.8), seed=1),
    "q_lora-rope": dict(yarn=False, seed=2),
    "no_q_lora-rope": dict(q_lora_rank=None, yarn=False, seed=3),
}
NEW_TOKENS = [3, 8, 5, 8]
# greedy for prompts 0 and 1, seeded sampling for 2 and 3; n=2 each, so siblings share their prompt's blocks
PARAMS = [SamplingParams(n=2, temperature=0, max_new_tokens=NEW_TOKENS[0]),
          SamplingParams(n=2, temperature=0, max_new_tokens=NEW_TOKENS[1]),
          SamplingParams(n=2, temperature=1.0, max_new_tokens=NEW_TOKENS[2], seed=5),
          SamplingParams(n=2, temperature=0.8, top_k=20, max_new_tokens=NEW_TOKENS[3], seed=6)]


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    return load_pair("deepseek_v3", tmp_path_factory.mktemp("hf"), **VARIANTS[request.param])


def engine(model, latent: bool, **cache) -> Engine:
    # 3 sequences at a time, 6 tokens per step (the 7-token prompt is prefilled in two chunks), 4-token blocks
    config = CacheConfig(mla_latent=latent, block_size=4, max_tokens_per_step=6, **cache)
    return Engine(model, max_batch_size=3, max_seq_len=24, cache=config)


def run(model, latent: bool):
    """(completions, the logits of every forward) of PARAMS on PROMPTS."""
    captured = []
    hook = model.output_layer.register_forward_hook(lambda module, args, out: captured.append(out[0].clone()))
    try:
        return engine(model, latent).generate(PROMPTS, PARAMS), captured
    finally:
        hook.remove()


def assert_same_generation(model):
    (latent, latent_logits), (expanded, expanded_logits) = run(model, True), run(model, False)
    assert [c.token_ids for c in latent] == [c.token_ids for c in expanded]
    logprobs = [torch.tensor([x for c in out for x in c.logprobs], dtype=torch.float64) for out in (latent, expanded)]
    assert (logprobs[0] - logprobs[1]).abs().max() <= 1e-5
    assert len(latent_logits) == len(expanded_logits) > max(NEW_TOKENS)
    for got, want in zip(latent_logits, expanded_logits):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    return latent


def test_latent_cache_generates_what_the_expanded_cache_generates(pair):
    _, model = pair
    latent = assert_same_generation(model)
    assert [c.prompt_index for c in latent] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_latent_greedy_equals_no_cache_decoding_and_transformers(pair):
    hf_model, model = pair
    params = [SamplingParams(temperature=0, max_new_tokens=m) for m in NEW_TOKENS]
    for c in engine(model, True).generate(PROMPTS, params):
        prompt, m = PROMPTS[c.prompt_index], NEW_TOKENS[c.prompt_index]
        assert c.token_ids == no_cache_greedy(model, prompt, m)
        # no eos, as the engine here: the config's eos (1) is a greedy token of one variant
        hf = hf_model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=m, eos_token_id=None,
                               pad_token_id=0)
        assert c.token_ids == hf[0, len(prompt):].tolist()


def test_absorbed_weights_follow_in_place_updates(tmp_path):
    """The trainer updates linear_kv_up_proj in place between rollouts: the absorbed W_UK, W_UV must see it."""
    _, model = load_pair("deepseek_v3", tmp_path)
    before = engine(model, True).generate(PROMPTS, PARAMS)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.decoder.layers:
            weight = layer.self_attention.linear_kv_up_proj.weight
            weight.add_(0.5 * torch.randn(weight.shape, generator=g))
    after = assert_same_generation(model)
    assert [c.token_ids for c in after] != [c.token_ids for c in before]


@pytest.mark.parametrize("latent", [True, False])
def test_cache_bytes(pair, latent):
    _, model = pair
    cfg, mla = model.model_config, model.model_config.mla
    assert all(isinstance(layer.self_attention, LatentCacheMLASelfAttention) for layer in model.decoder.layers)
    per_layer = (mla.kv_lora_rank + mla.qk_rope_head_dim if latent else
                 cfg.num_attention_heads * (mla.qk_nope_head_dim + mla.qk_rope_head_dim + mla.v_head_dim)) * 4
    assert layer_kv_bytes_per_token(cfg, 1, 4, latent) == per_layer
    assert kv_bytes_per_token(model, latent) == cfg.num_layers * per_layer
    gen = engine(model, latent, num_blocks=20)
    with gen.generating():
        gen.generate(PROMPTS, PARAMS)
        cache = gen.cache
        assert cache.nbytes() == 20 * 4 * cfg.num_layers * per_layer
        if latent:  # one pool per layer, [blocks, block_size, 1, latent + rope], values a view of it
            assert not cache.values
            width = mla.kv_lora_rank + mla.qk_rope_head_dim
            assert {tuple(k.shape) for k in cache.keys.values()} == {(20, 4, 1, width)}
