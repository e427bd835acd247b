"""Bad requests get OpenAI-format 400s naming the field (404 for an unknown model); 1,000 malformed requests of
mixed kinds leave the server serving."""
import http.client
import json
import random

import openai
import pytest

from tests.serving.conftest import PROMPTS
from tests.serving.server_fixtures import MODEL_NAME

CHAT = [{"role": "user", "content": "hi"}]


def _error(call) -> tuple[int, dict]:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    return caught.value.status_code, caught.value.body


@pytest.mark.parametrize("kwargs, param", [
    (dict(max_tokens=0), "max_tokens"),
    (dict(temperature=-0.5), "temperature"),
    (dict(top_p=0), "top_p"),
    (dict(n=0), "n"),
    (dict(n=65), "n"),  # more samples than the engine's batch
    (dict(logprobs=21), "logprobs"),
    (dict(extra_body={"max_tokens": "5"}), "max_tokens"),  # a string where an int belongs
    (dict(extra_body={"stream": "yes"}), "stream"),
    (dict(extra_body={"seed": 1.5}), "seed"),
    (dict(extra_body={"stop": ["ok", 3]}), "stop[1]"),
    (dict(extra_body={"presence_penalty": 0.5}), "presence_penalty"),
    (dict(extra_body={"echo": True}), "echo"),
    (dict(extra_body={"response_format": {"type": "json_object"}}), "response_format"),
    (dict(stop=["x" * 1001]), "stop[0]"),  # holding back a long stop string costs its length squared per token
    (dict(prompt=[1, 2, 10**6]), "prompt"),  # outside the vocabulary
    (dict(prompt="7 + " * 400), "prompt"),  # longer than the context
    (dict(max_tokens=251), "max_tokens"),  # 6 prompt tokens + 251 > the context of 256
])
def test_completion_errors_name_the_field(client, kwargs, param):
    kwargs = {"model": MODEL_NAME, "prompt": PROMPTS[0], **kwargs}
    status, body = _error(lambda: client.completions.create(**kwargs))
    assert status == 400 and body["param"] == param and body["type"] == "invalid_request_error", body
    assert param.split("[")[0] in body["message"] and "\n" not in body["message"]


@pytest.mark.parametrize("kwargs, param", [
    (dict(messages=[{"role": "user", "content": 3}]), "messages[0].content"),
    (dict(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
    (dict(messages=[]), "messages"),
    (dict(messages=[{"role": "user", "content": "7 + " * 400}]), "messages"),  # longer than the context
    (dict(max_completion_tokens=0), "max_completion_tokens"),
    (dict(top_logprobs=2), "top_logprobs"),  # without logprobs=true
])
def test_chat_errors_name_the_field(client, kwargs, param):
    kwargs = {"model": MODEL_NAME, "messages": CHAT, **kwargs}
    status, body = _error(lambda: client.chat.completions.create(**kwargs))
    assert status == 400 and body["param"] == param, body


def test_unknown_model_is_404(client):
    status, body = _error(lambda: client.chat.completions.create(model="gpt-5", messages=CHAT))
    assert status == 404 and body["code"] == "model_not_found" and body["param"] == "model"


def test_an_internal_error_is_openai_json_and_the_server_goes_on(client, server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("tokenizer exploded")

    monkeypatch.setattr(server.tokenizer, "encode", broken)
    status, body = _error(lambda: client.completions.create(model=MODEL_NAME, prompt="1", max_tokens=1))
    assert status == 500 and body["type"] == "server_error" and "tokenizer exploded" in body["message"]
    monkeypatch.undo()
    assert client.completions.create(model=MODEL_NAME, prompt="1", max_tokens=1).choices[0].finish_reason


def test_chat_without_a_chat_template_points_to_completions(client, server, monkeypatch):
    monkeypatch.setattr(server.tokenizer, "chat_template", None)
    status, body = _error(lambda: client.chat.completions.create(model=MODEL_NAME, messages=CHAT))
    assert status == 400 and body["param"] == "messages" and "no chat template" in body["message"], body
    assert "/v1/completions" in body["message"]


def _without(body: dict, key: str) -> dict:
    return {k: v for k, v in body.items() if k != key}


def _malformed_bodies(count: int, seed: int = 0) -> list[bytes]:
    """Bad JSON, wrong types, missing fields, out-of-range values, oversized n, a bad nested message..."""
    rng = random.Random(seed)
    good = {"model": MODEL_NAME, "prompt": "1 + 1", "max_tokens": 2}
    breakers = [
        lambda: b"{not json",
        lambda: json.dumps([1, 2, 3]).encode(),
        lambda: json.dumps(_without(good, rng.choice(["model", "prompt"]))).encode(),
        lambda: json.dumps({**good, "n": rng.randint(129, 10**9)}).encode(),
        lambda: json.dumps({**good, "temperature": -rng.random() - 0.01}).encode(),
        lambda: json.dumps({**good, "max_tokens": rng.choice([0, -5, "8", 2.5, [1]])}).encode()
        if rng.random() < 0.9 else json.dumps({**good, "max_tokens": 10**9}).encode(),
        lambda: json.dumps({**good, "prompt": rng.choice([5, {"a": 1}, [], [[]], [-1], True])}).encode(),
        lambda: json.dumps({**good, "top_p": rng.choice([0, 1.5, "x"])}).encode(),
        lambda: json.dumps({**good, "stop": ["a"] * 17}).encode(),
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))),
        lambda: json.dumps({**good, "model": "nope"}).encode(),
    ]
    return [rng.choice(breakers)() for _ in range(count)]


def test_the_server_survives_1000_malformed_requests(server, client):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    statuses = {}
    try:
        for i, body in enumerate(_malformed_bodies(1000)):
            path = "/v1/completions" if i % 4 else "/v1/chat/completions"
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = json.loads(response.read())
            assert set(payload["error"]) == {"message", "type", "param", "code"}, payload
            statuses[response.status] = statuses.get(response.status, 0) + 1
    finally:
        connection.close()
    assert set(statuses) <= {400, 404} and sum(statuses.values()) == 1000
    assert server.engine_loop.counters.live == 0
    response = client.completions.create(model=MODEL_NAME, prompt="1 + 1", max_tokens=3, temperature=0)
    assert response.usage.completion_tokens == 3
