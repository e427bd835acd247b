"""The engine's request API: requests joining and leaving a running batch one at a time (add_request / step /
abort / stream) give generate()'s tokens, report every token exactly once, free their cache blocks, and return
top logprobs equal to an fp64 no-cache forward (CPU, fp32)."""
import pytest
import torch

from r1_megatron.models import logits
from r1_megatron.rollout import CacheConfig, Engine, FinishReason, SamplingParams

from .engine_fixtures import PROMPTS, load_pair

SAMPLED = SamplingParams(n=3, temperature=0.9, top_p=0.95, max_new_tokens=6, seed=11)
GREEDY = SamplingParams(temperature=0, max_new_tokens=6)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_pair("qwen2", tmp_path_factory.mktemp("hf"))[1]


def _engine(model, **kw):
    return Engine(model, **{"max_batch_size": 8, "max_seq_len": 32, "cache": CacheConfig(block_size=4), **kw})


def _collect(outputs, into):
    """Append each report's new tokens to into[(request, sample)]; return the finish reasons seen."""
    finished = {}
    for out in outputs:
        for d in out.samples:
            into.setdefault((out.request_id, d.index), []).extend(d.token_ids)
            if d.finish_reason is not None:
                assert (out.request_id, d.index) not in finished, "a finish reported twice"
                finished[(out.request_id, d.index)] = d.finish_reason
    return finished


def test_requests_joining_a_running_batch_get_generates_tokens(model):
    want = _engine(model).generate(PROMPTS, SAMPLED)
    engine, tokens, reasons = _engine(model), {}, {}
    with engine.generating():
        ids = [engine.add_request(PROMPTS[0], SAMPLED)]
        for i, prompt in enumerate(PROMPTS[1:], 1):  # one more request joins every two steps
            for _ in range(2):
                reasons.update(_collect(engine.step(), tokens))
            ids.append(engine.add_request(prompt, SAMPLED))
        while engine.has_unfinished_requests:
            reasons.update(_collect(engine.step(), tokens))
        assert engine.stats.peak_running > SAMPLED.n  # several requests were decoded together
        assert engine._blocks.num_free == engine.num_blocks - 1  # every block is back (block 0 is never handed out)
    assert ids == ["0", "1", "2", "3"]
    for c in want:
        key = (ids[c.prompt_index], len([d for d in want[:want.index(c)] if d.prompt_index == c.prompt_index]))
        assert tokens[key] == c.token_ids, key
        assert reasons[key] is c.finish_reason


def test_abort_frees_the_request_and_leaves_the_others_unchanged(model):
    want = _engine(model).generate(PROMPTS[:2], GREEDY)
    engine, tokens = _engine(model), {}
    with engine.generating():
        a, b = engine.add_request(PROMPTS[0], GREEDY), engine.add_request(PROMPTS[1], SAMPLED)
        _collect(engine.step(), tokens), _collect(engine.step(), tokens)
        assert engine.abort(b) and not engine.abort("no-such-request")
        reasons = _collect(engine.step(), tokens)
        assert {reasons[(b, j)] for j in range(SAMPLED.n)} == {FinishReason.ABORT}
        assert b not in engine.requests
        while engine.has_unfinished_requests:
            reasons.update(_collect(engine.step(), tokens))
        assert engine._blocks.num_free == engine.num_blocks - 1
    assert tokens[(a, 0)] == want[0].token_ids
    assert all(len(tokens.get((b, j), [])) <= 2 for j in range(SAMPLED.n))  # nothing sampled after the abort


@pytest.mark.parametrize("index, steps_before, budget", [(0, 0, None), (2, 0, None), (0, 3, None), (1, 3, None),
                                                          (0, 1, 3), (1, 1, 3)])
def test_aborting_one_sample_keeps_its_siblings_samples(model, index, steps_before, budget):
    # before any step the group is one waiting leader (sample 0) carrying unforked siblings: aborting the
    # leader hands the prompt to sample 1; after 3 steps the samples run on their own; with a 3-token budget
    # the 7-token prompt is half prefilled after one step, and the leader hands over its blocks mid-prefill
    want = _engine(model).generate([PROMPTS[1]], SAMPLED)
    cache = CacheConfig(block_size=4, max_tokens_per_step=budget) if budget else CacheConfig(block_size=4)
    engine, tokens = _engine(model, cache=cache), {}
    with engine.generating():
        rid = engine.add_request(PROMPTS[1], SAMPLED)
        for _ in range(steps_before):
            _collect(engine.step(), tokens)
        engine.abort(rid, index)
        reasons = {}
        while engine.has_unfinished_requests:
            reasons.update(_collect(engine.step(), tokens))
        assert engine._blocks.num_free == engine.num_blocks - 1
    assert reasons[(rid, index)] is FinishReason.ABORT
    for j in set(range(SAMPLED.n)) - {index}:
        assert tokens[(rid, j)] == want[j].token_ids and reasons[(rid, j)] is want[j].finish_reason, j
    # the prompt fits one step, which samples too (with the small budget nothing is sampled after one step)
    assert len(tokens.get((rid, index), [])) == (0 if budget else steps_before)


def test_stream_follows_one_request_and_loses_no_other_token(model):
    want = _engine(model).generate(PROMPTS[:2], [GREEDY, SAMPLED])
    engine, tokens = _engine(model), {}
    with engine.generating():
        a, b = engine.add_request(PROMPTS[0], GREEDY), engine.add_request(PROMPTS[1], SAMPLED)
        streamed = [t for out in engine.stream(a) for d in out.samples for t in d.token_ids]
        while engine.has_unfinished_requests:
            _collect(engine.step(), tokens)
        with pytest.raises(ValueError, match="no running request"):
            next(engine.stream(a))
    assert streamed == want[0].token_ids
    assert [tokens[(b, j)] for j in range(SAMPLED.n)] == [c.token_ids for c in want[1:]]


def test_top_logprobs_equal_an_fp64_forward(model):
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=4, seed=3, logprobs=5)
    engine, got = _engine(model), []
    with engine.generating():
        rid = engine.add_request(PROMPTS[1], params)
        for out in engine.stream(rid):
            got += [(out.request_id, d) for d in out.samples]
    vocab = model.model_config.vocab_size
    assert all(len(d.top_logprobs) == len(d.token_ids) for _, d in got)
    per_sample = {}
    for _, d in got:
        per_sample.setdefault(d.index, []).append(d)
    for deltas in per_sample.values():
        tokens = [t for d in deltas for t in d.token_ids]
        tops = [top for d in deltas for top in d.top_logprobs]
        sampled = [lp for d in deltas for lp in d.logprobs]
        out_TV = logits(model, torch.tensor([PROMPTS[1] + tokens]))[0, len(PROMPTS[1]) - 1:-1, :vocab].double()
        ref_TV = torch.log_softmax(out_TV / 0.7, dim=-1)
        for t, (top, token, lp) in enumerate(zip(tops, tokens, sampled)):
            ref_values, ref_ids = ref_TV[t].topk(5)
            assert [i for i, _ in top] == ref_ids.tolist(), t
            assert torch.allclose(torch.tensor([v for _, v in top], dtype=torch.float64), ref_values, atol=1e-5)
            if token in dict(top):
                assert abs(dict(top)[token] - lp) < 1e-5  # the sampled token's logprob is the same number


def test_request_api_errors_name_the_problem(model):
    engine = _engine(model)
    with pytest.raises(RuntimeError, match="inside `with engine.generating"):
        engine.add_request([1, 2])
    with engine.generating():
        engine.add_request([1, 2], request_id="x")
        with pytest.raises(ValueError, match="request_id must be a str not already running, got 'x'"):
            engine.add_request([3], request_id="x")
        with pytest.raises(ValueError, match="add_request: prompts \\[0\\] are longer than max_seq_len - 1"):
            engine.add_request(list(range(40)))
        with pytest.raises(ValueError, match="abort: index must be in \\[0, 1\\), got 5"):
            engine.abort("x", 5)
    with pytest.raises(ValueError, match="SamplingParams.logprobs must be an int in \\[0, 20\\], got 21"):
        SamplingParams(logprobs=21)
