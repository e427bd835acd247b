"""The FastAPI application: OpenAI's /v1/models, /v1/completions and /v1/chat/completions on an EngineLoop, and
/health and /stats.

Handlers validate and tokenize, submit a GenerationJob to the engine loop and either stream its deltas as
server-sent events (ending `data: [DONE]`) or answer the whole response; a client that disconnects has its
requests aborted in the engine.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from r1_megatron.rollout import SamplingParams

from .engine_loop import EngineLoop
from .generation_job import GenerationJob
from .protocol import APIError, ChatCompletionRequest, CompletionRequest, bad_request, parse_request
from .reasoning import prompt_opens_think
from .responses import ChatFormat, CompletionFormat, LogprobsBuilder, sse

COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
DISCONNECT_POLL_S = 0.25
LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """What the server knows of its model: the name clients use, the tokenizer, the context (prompt +
    completion tokens), the vocabulary and the most samples one request may ask for (the engine's batch)."""

    name: str
    tokenizer: object
    max_seq_len: int
    vocab_size: int
    max_batch_size: int
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    def check_model(self, model: str) -> None:
        if model != self.name:
            raise APIError(404, f"model: the model {model!r} does not exist; this server serves {self.name!r}",
                           type="invalid_request_error", param="model", code="model_not_found")

    def prompt_ids(self, prompt: str | list[int], param: str) -> list[int]:
        ids = self.tokenizer.encode(prompt, add_special_tokens=True) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise bad_request(param, f"{param}: the prompt is empty")
        if max(ids) >= self.vocab_size:
            raise bad_request(param, f"{param}: token id {max(ids)} is outside the vocabulary ({self.vocab_size})")
        if len(ids) >= self.max_seq_len:
            raise bad_request(param, f"{param}: the prompt has {len(ids)} tokens; the context is {self.max_seq_len} "
                                     "tokens (prompt + completion)")
        return ids

    def max_tokens(self, prompts: list[list[int]], requested: int | None, default: int | None) -> int:
        """The completion limit: `requested`, else `default` (at most the rest of the context), else the rest of
        the context; 400 when a prompt plus a requested limit exceeds the context."""
        longest = max(map(len, prompts))
        rest = self.max_seq_len - longest
        limit = requested if requested is not None else min(default, rest) if default else rest
        if longest + limit > self.max_seq_len:
            raise bad_request("max_tokens", f"max_tokens: {longest} prompt tokens + {limit} exceed the context of "
                                            f"{self.max_seq_len} tokens")
        return limit


def sampling_params(body, served: ServedModel, max_tokens: int, top_logprobs: int) -> SamplingParams:
    if body.n > served.max_batch_size:
        raise bad_request("n", f"n: {body.n} samples exceed this server's batch of {served.max_batch_size}")
    return SamplingParams(n=body.n, temperature=body.temperature, top_p=body.top_p, top_k=max(body.top_k, 0),
                          max_new_tokens=max_tokens, seed=body.seed, logprobs=top_logprobs)


def internal_errors_as_json(handler):
    """A handler's unexpected exception (a bug) becomes a 500 in OpenAI's JSON, its traceback logged; the
    connection and the server go on (Starlette's catch-all handler would re-raise it and drop the connection)."""
    @functools.wraps(handler)
    async def guarded(request: Request):
        try:
            return await handler(request)
        except APIError:
            raise
        except Exception as exc:
            LOG.exception("internal error in %s", request.url.path)
            raise APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error") from None
    return guarded


def build_app(engine_loop: EngineLoop, served: ServedModel) -> FastAPI:
    app = FastAPI(title="r1-megatron", docs_url=None, redoc_url=None)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)


    @app.get("/health")
    async def health():
        if engine_loop.closing or engine_loop.error is not None:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return {"status": "ok"}

    @app.get("/stats")
    async def stats():
        return engine_loop.stats()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": served.created,
                                            "owned_by": "r1-megatron", "max_model_len": served.max_seq_len}]}

    @app.post("/v1/completions")
    @internal_errors_as_json
    async def completions(request: Request):
        body = parse_request(CompletionRequest, await request.body())
        served.check_model(body.model)
        prompts = [served.prompt_ids(p, "prompt") for p in body.prompts()]
        params = sampling_params(body, served, served.max_tokens(prompts, body.max_tokens, COMPLETION_MAX_TOKENS),
                                 body.logprobs or 0)
        job = GenerationJob(engine_loop, prompts, params, served.tokenizer, body.stops(), "prompt")
        logprobs = LogprobsBuilder(served.tokenizer, chat=False) if body.logprobs is not None else None
        return await answer(request, job, CompletionFormat(served.name, len(job.choices), logprobs), body)

    @app.post("/v1/chat/completions")
    @internal_errors_as_json
    async def chat_completions(request: Request):
        body = parse_request(ChatCompletionRequest, await request.body())
        served.check_model(body.model)
        text = chat_prompt(served.tokenizer, body)
        prompts = [served.prompt_ids(served.tokenizer.encode(text), "messages")]
        params = sampling_params(body, served, served.max_tokens(prompts, body.token_limit, None),
                                 body.top_logprobs or 0)
        job = GenerationJob(engine_loop, prompts, params, served.tokenizer, body.stops(), "messages")
        logprobs = LogprobsBuilder(served.tokenizer, chat=True) if body.logprobs else None
        return await answer(request, job, ChatFormat(served.name, len(job.choices), logprobs,
                                                     prompt_opens_think(text)), body)

    return app


def chat_prompt(tokenizer, body: ChatCompletionRequest) -> str:
    """The conversation rendered by the tokenizer's chat template, ready for the assistant's turn."""
    if getattr(tokenizer, "chat_template", None) is None:  # a base model's tokenizer (the built-in demo's too)
        raise bad_request("messages", "messages: this model's tokenizer has no chat template; send the prompt text "
                                      "to /v1/completions instead")
    try:
        return tokenizer.apply_chat_template([m.template_message() for m in body.messages],
                                             add_generation_prompt=True)
    except Exception as exc:  # jinja2 errors, raise_exception() of templates that refuse a conversation
        raise bad_request("messages", f"messages: the chat template refused them: {exc}") from None


async def answer(request: Request, job: GenerationJob, fmt: CompletionFormat, body):
    """The streamed events, or the whole response once every choice has finished."""
    if body.stream:
        return StreamingResponse(events(job, fmt, body.include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    task = asyncio.ensure_future(collect(job, fmt))
    try:
        while not (await asyncio.wait({task}, timeout=DISCONNECT_POLL_S))[0]:
            if await request.is_disconnected():
                task.cancel()
                return Response(status_code=499)  # nobody reads it: the client has gone
        return JSONResponse(task.result())
    finally:
        job.cancel()  # nothing left once it has finished; otherwise a disconnect or an error


async def collect(job: GenerationJob, fmt: CompletionFormat) -> dict:
    async for index, delta in job.deltas():
        fmt.add(index, delta)
    return fmt.response(job)


async def events(job: GenerationJob, fmt: CompletionFormat, include_usage: bool):
    """Server-sent events; an error after the response has started is sent as an `error` event. A client that
    disconnects cancels this generator: its requests are aborted in `finally`."""
    try:
        for chunk in fmt.opening():
            yield sse(chunk)
        async for index, delta in job.deltas():
            chunk = fmt.chunk(index, delta)
            if chunk is not None:
                yield sse(chunk)
        if include_usage:
            yield sse(fmt.usage_chunk(job))
    except APIError as exc:
        yield sse(exc.body())
    finally:
        job.cancel()
    yield sse("[DONE]")
