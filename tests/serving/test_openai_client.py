"""The official openai client against the in-process server: completions and chat, streamed and not, greedy output
equal to Engine.generate's, n > 1, stop strings, seeds, usage counts, logprobs against the no-cache forward."""
import math

import pytest
import torch

from tests.serving.conftest import CHAT, GREEDY_TOKENS, PROMPTS
from tests.serving.server_fixtures import MODEL_NAME


def text_of(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=True)


def streamed_text(stream, n=1):
    texts, finish, usage = [""] * n, [None] * n, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            piece = choice.text if hasattr(choice, "text") else choice.delta.content
            texts[choice.index] += piece or ""
            finish[choice.index] = choice.finish_reason or finish[choice.index]
    return texts, finish, usage


def test_models_lists_the_served_model(client, server):
    assert [m.id for m in client.models.list()] == [MODEL_NAME]
    assert server.get("/health") == {"status": "ok"}


@pytest.mark.parametrize("stream", [False, True])
def test_greedy_completion_is_engine_generate(client, server, references, stream):
    want = text_of(server.tokenizer, references.greedy[1])
    kwargs = dict(model=MODEL_NAME, prompt=PROMPTS[1], max_tokens=GREEDY_TOKENS, temperature=0)
    if stream:
        texts, finish, usage = streamed_text(client.completions.create(stream=True, stream_options={"include_usage": True},
                                                                      **kwargs))
    else:
        response = client.completions.create(**kwargs)
        texts, finish, usage = [response.choices[0].text], [response.choices[0].finish_reason], response.usage
    assert texts == [want] and finish == ["length"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(references.prompt_ids[1]), GREEDY_TOKENS)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_greedy_chat_is_engine_generate_of_the_chat_template(client, server, references, stream):
    want = text_of(server.tokenizer, references.chat_greedy)
    kwargs = dict(model=MODEL_NAME, messages=CHAT, max_completion_tokens=len(references.chat_greedy), temperature=0)
    if stream:
        texts, finish, _ = streamed_text(client.chat.completions.create(stream=True, **kwargs))
    else:
        response = client.chat.completions.create(**kwargs)
        texts, finish = [response.choices[0].message.content], [response.choices[0].finish_reason]
        assert response.usage.prompt_tokens == len(references.chat_ids)
        assert response.choices[0].message.role == "assistant"
    assert texts == [want.lstrip() if "</think>" in want else want]
    assert finish == ["length" if references.chat_greedy[-1] != server.tokenizer.eos_token_id else "stop"]


def test_n_samples_and_seed_reproducibility(client):
    kwargs = dict(model=MODEL_NAME, prompt=PROMPTS[2], max_tokens=12, temperature=1.0, n=3)
    first = client.completions.create(seed=7, **kwargs)
    again = client.completions.create(seed=7, **kwargs)
    other = client.completions.create(seed=8, **kwargs)
    texts = [c.text for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.text for c in again.choices]
    assert texts != [c.text for c in other.choices]
    assert len(set(texts)) > 1  # the samples of one request differ
    assert first.usage.completion_tokens == 3 * 12
    streamed, _, usage = streamed_text(client.completions.create(seed=7, stream=True,
                                                                stream_options={"include_usage": True}, **kwargs), n=3)
    assert streamed == texts and usage.completion_tokens == 36


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_cuts_the_text_and_aborts_the_sample(client, server, references, stream):
    full = text_of(server.tokenizer, references.greedy[3])
    # a stop string from the middle of the greedy text: the answer is what comes before its first occurrence
    start = next(i for i in range(2, len(full)) if full[i].isascii() and full[i].strip())
    stop = full[start]
    before = server.engine_loop.counters.aborts
    # max_tokens far past the stop: the sample is still running when the abort reaches the engine thread (with
    # max_tokens at the stop's own token count the engine could finish it first, and nothing would be aborted)
    kwargs = dict(model=MODEL_NAME, prompt=PROMPTS[3], max_tokens=8 * GREEDY_TOKENS, temperature=0,
                  stop=[stop, "@@@"])
    if stream:
        texts, finish, _ = streamed_text(client.completions.create(stream=True, **kwargs))
    else:
        response = client.completions.create(**kwargs)
        texts, finish = [response.choices[0].text], [response.choices[0].finish_reason]
        assert response.usage.completion_tokens < GREEDY_TOKENS
    assert texts == [full[:full.index(stop)]] and finish == ["stop"]
    assert server.engine_loop.counters.aborts == before + 1  # the engine stopped generating it


def test_completion_logprobs_are_the_forwards(client, references):
    response = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=GREEDY_TOKENS,
                                         temperature=0, logprobs=3)
    logprobs = response.choices[0].logprobs
    want_TV = references.logprobs_TV
    want = want_TV.gather(1, torch.tensor(references.greedy[0])[:, None])[:, 0]
    assert torch.allclose(torch.tensor(logprobs.token_logprobs, dtype=torch.float64), want, atol=1e-4)
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset == sorted(logprobs.text_offset)
    for top, want_V in zip(logprobs.top_logprobs, want_TV):
        assert len(top) <= 3  # tokens decoding to the same text share a key
        assert max(top.values()) == pytest.approx(want_V.max().item(), abs=1e-4)


def test_chat_logprobs_and_top_logprobs(client, references):
    response = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=4, temperature=0,
                                              logprobs=True, top_logprobs=2)
    content = response.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.bytes == list(entry.token.encode()) and math.isfinite(entry.logprob)
