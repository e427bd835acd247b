"""One in-process server for every serving test that asks for it (package scope: the model loads once), and the
references computed before it starts: each prompt's greedy tokens from Engine.generate run alone, and the first
prompt's logprobs from the no-cache training forward."""
import dataclasses

import pytest
import torch

from r1_megatron.models import logits
from r1_megatron.rollout import SamplingParams
from tests.models.hf_fixtures import qwen2_chat_dir
from tests.serving.server_fixtures import load_engine, start_server

GREEDY_TOKENS = 8
PROMPTS = [f"What is {a} + {b}?" for a in range(8) for b in range(0, 24, 3)]  # 64 prompts
CHAT = [{"role": "system", "content": "Add."}, {"role": "user", "content": "What is 12 + 30?"}]


@dataclasses.dataclass
class References:
    prompt_ids: list[list[int]]  # PROMPTS tokenized as /v1/completions does
    greedy: list[list[int]]  # Engine.generate's greedy tokens of each prompt alone
    chat_ids: list[int]
    chat_greedy: list[int]
    logprobs_TV: torch.Tensor  # log_softmax of the no-cache forward at each greedy token of PROMPTS[0], fp64


@pytest.fixture(scope="package")
def chat_dir(tmp_path_factory):
    return qwen2_chat_dir(tmp_path_factory.mktemp("qwen2_chat"))


@pytest.fixture(scope="package")
def references_and_server(chat_dir):
    engine, tokenizer = load_engine(chat_dir)
    params = SamplingParams(temperature=0, max_new_tokens=GREEDY_TOKENS)
    prompt_ids = [tokenizer.encode(p, add_special_tokens=True) for p in PROMPTS]
    chat_ids = tokenizer.encode(tokenizer.apply_chat_template(CHAT, add_generation_prompt=True))
    with engine.generating():
        greedy = [engine.generate([ids], params)[0].token_ids for ids in prompt_ids]
        chat_greedy = engine.generate([chat_ids], SamplingParams(temperature=0, max_new_tokens=24))[0].token_ids
    with torch.no_grad():
        out_TV = logits(engine.model, torch.tensor([prompt_ids[0] + greedy[0]]))[0].double()
    logprobs_TV = torch.log_softmax(out_TV[len(prompt_ids[0]) - 1:-1], dim=-1)
    server = start_server(engine, tokenizer)
    yield References(prompt_ids, greedy, chat_ids, chat_greedy, logprobs_TV), server
    server.stop()


@pytest.fixture(scope="package")
def server(references_and_server):
    return references_and_server[1]


@pytest.fixture(scope="package")
def references(references_and_server):
    return references_and_server[0]


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
