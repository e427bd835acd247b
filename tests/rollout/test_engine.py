"""The generation engine against no-cache decoding, transformers' generate and the training forward (CPU, fp32)."""
import pytest
import torch

from r1_megatron.rollout import CacheConfig, Engine, FinishReason, SamplingParams, logprob_mismatch

from .engine_fixtures import PROMPTS, forward_logprobs, load_pair, no_cache_greedy

NEW_TOKENS = [3, 8, 5, 8]  # different lengths free slots at different steps: continuous batching admits waiting


@pytest.fixture(scope="module", params=["deepseek_v3", "qwen2"])
def pair(request, tmp_path_factory):
    return load_pair(request.param, tmp_path_factory.mktemp("hf"))


def greedy(engine, prompts=PROMPTS, n=1):
    params = [SamplingParams(n=n, temperature=0, max_new_tokens=m) for m in NEW_TOKENS[:len(prompts)]]
    return engine.generate(prompts, params)


def test_greedy_equals_no_cache_decoding(pair):
    _, model = pair
    # 3 slots for 4 prompts (+ the n=2 siblings): prompts wait and are admitted as others finish
    out = greedy(Engine(model, max_batch_size=3, max_seq_len=32), n=2)
    assert [c.prompt_index for c in out] == [0, 0, 1, 1, 2, 2, 3, 3]
    for c in out:
        want = no_cache_greedy(model, PROMPTS[c.prompt_index], NEW_TOKENS[c.prompt_index])
        assert c.token_ids == want
        assert c.finish_reason is FinishReason.LENGTH


def test_chunked_prefill_steps_that_sample_nothing(pair):
    """A budget of 2 tokens per step: the 7-token prompt alone is prefilled over steps whose chunks do not reach
    its end (no logits to compute), and still decodes what no-cache decoding does."""
    _, model = pair
    engine = Engine(model, max_batch_size=1, max_seq_len=16, cache=CacheConfig(max_tokens_per_step=2))
    out = engine.generate([PROMPTS[1]], SamplingParams(temperature=0, max_new_tokens=3))
    assert out[0].token_ids == no_cache_greedy(model, PROMPTS[1], 3)


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    return load_pair("llama", tmp_path_factory.mktemp("hf"))


def test_greedy_equals_transformers_generate(pair):
    _check_transformers_generate(*pair)


def test_llama_greedy_equals_transformers_generate(llama_pair):
    _check_transformers_generate(*llama_pair)


def _check_transformers_generate(hf_model, model):
    out = greedy(Engine(model, max_batch_size=4, max_seq_len=32))
    for c in out:
        prompt, m = PROMPTS[c.prompt_index], NEW_TOKENS[c.prompt_index]
        # no EOS on either side (min_new_tokens would mask EOS logits: the tiny Llama's argmax often is EOS)
        hf = hf_model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=m, eos_token_id=None,
                               pad_token_id=0)
        assert c.token_ids == hf[0, len(prompt):].tolist()


@pytest.mark.parametrize("params", [SamplingParams(temperature=0, max_new_tokens=6),
                                    SamplingParams(n=3, temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=6,
                                                   seed=11)])
def test_logprobs_equal_the_training_forward(pair, params):
    _, model = pair
    out = Engine(model, max_batch_size=4, max_seq_len=32).generate(PROMPTS, params)
    temperature = params.temperature or 1.0
    rollout = torch.cat([torch.tensor(c.logprobs, dtype=torch.float64) for c in out])
    train = torch.cat([forward_logprobs(model, PROMPTS[c.prompt_index], c.token_ids, temperature) for c in out])
    mismatch = logprob_mismatch(rollout, train)
    assert mismatch.max_abs <= 1e-5
    assert 0 < mismatch.mean_abs <= mismatch.max_abs  # not zero: the two really are different computations


def test_logprob_mismatch_hand_values():
    m = logprob_mismatch(torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -2.0, -0.25]))
    assert m.max_abs == 0.5 and m.mean_abs == pytest.approx(0.25)
    assert logprob_mismatch(torch.zeros(0), torch.zeros(0)) == (0.0, 0.0)
    with pytest.raises(ValueError, match="two \\[N\\] tensors"):
        logprob_mismatch(torch.zeros(3), torch.zeros(4))


def test_seeded_samples_are_reproducible_and_batch_independent(pair):
    _, model = pair
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=5, seed=7)
    one_slot = Engine(model, max_batch_size=1, max_seq_len=32).generate(PROMPTS, params)
    many = Engine(model, max_batch_size=8, max_seq_len=32).generate(PROMPTS, params)
    assert [c.token_ids for c in one_slot] == [c.token_ids for c in many]
    assert len({tuple(c.token_ids) for c in many[:4]}) > 1  # the n completions are different samples


def test_unseeded_requests_follow_the_engine_seed(pair):
    _, model = pair
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=5)
    runs = [Engine(model, max_batch_size=4, max_seq_len=32, seed=s).generate(PROMPTS, params) for s in (0, 0, 1)]
    tokens = [[c.token_ids for c in run] for run in runs]
    assert tokens[0] == tokens[1] and tokens[0] != tokens[2]


def test_stop_tokens_and_lengths(pair):
    _, model = pair
    engine = Engine(model, max_batch_size=4, max_seq_len=32)
    free = engine.generate([PROMPTS[1]], SamplingParams(temperature=0, max_new_tokens=8))[0].token_ids
    stop = free[3]
    cut = free[:free.index(stop) + 1]
    by_params = engine.generate([PROMPTS[1]], SamplingParams(temperature=0, max_new_tokens=8, stop_token_ids=[stop]))
    by_eos = Engine(model, max_batch_size=4, max_seq_len=32, eos_token_ids=[stop]).generate(
        [PROMPTS[1]], SamplingParams(temperature=0, max_new_tokens=8))
    for c in (by_params[0], by_eos[0]):
        assert c.token_ids == cut and c.finish_reason is FinishReason.STOP and len(c.logprobs) == len(cut)
    # a 7-token prompt in 10 positions: 3 new tokens fit, then "length"
    short = Engine(model, max_batch_size=2, max_seq_len=10).generate([PROMPTS[1]], SamplingParams(max_new_tokens=50))
    assert len(short[0].token_ids) == 3 and short[0].finish_reason is FinishReason.LENGTH


def test_generating_switches_modes_and_frees_the_cache(pair):
    _, model = pair
    engine = Engine(model, max_batch_size=2, max_seq_len=16)
    model.train()
    with engine.generating():
        assert not model.training
        engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=2))
        cache = engine.cache
        assert cache.nbytes() > 0
        with pytest.raises(RuntimeError, match="already active"):
            with engine.generating():
                pass
    assert model.training and engine.cache is None and cache.nbytes() == 0
    model.eval()


@pytest.mark.parametrize("prompts, message", [
    ([[1, 2], list(range(1, 16)), [3], list(range(1, 20))], r"prompts \[1, 3\] are longer than max_seq_len - 1 = 14"),
    ([[1], []], r"prompts \[1\] are empty"),
    ([[1], [2, 10_000]], r"prompts \[1\] have token ids >= the vocabulary size"),
    ([[1], [2, -1]], r"prompt_token_ids\[1\] must hold non-negative ints"),
    ("hello", "must be a list of token-id lists"),
])
def test_bad_prompts_are_named(pair, prompts, message):
    _, model = pair
    with pytest.raises(ValueError, match=message):
        Engine(model, max_batch_size=2, max_seq_len=15).generate(prompts, SamplingParams())


def test_bad_engine_arguments(pair):
    _, model = pair
    with pytest.raises(ValueError, match="max_batch_size must be an int >= 1, got 0"):
        Engine(model, max_batch_size=0, max_seq_len=8)
    with pytest.raises(ValueError, match="max_seq_len must be an int >= 2"):
        Engine(model, max_batch_size=1, max_seq_len=1.5)
    with pytest.raises(ValueError, match="pipeline_micro_batches must be an int >= 1, got 0"):
        Engine(model, max_batch_size=1, max_seq_len=8, pipeline_micro_batches=0)
    with pytest.raises(ValueError, match="one SamplingParams or one per prompt \\(2\\)"):
        Engine(model, max_batch_size=1, max_seq_len=8).generate([[1], [2]], [SamplingParams()])
