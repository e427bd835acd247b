"""The OpenAI request bodies the server accepts (pydantic models) and OpenAI's error JSON.

Types are strict: `"max_tokens": "5"` or `"stream": "yes"` is a 400 naming the field, not a silent coercion.
Fields the OpenAI API has but this server cannot honour (echo, suffix, best_of, penalties, logit_bias, tools,
response_format)
are refused by name when set to anything but their neutral value; other unknown fields (user, metadata, ...) are
ignored, as clients and harnesses send them.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

INT64 = Field(ge=-2**63, le=2**63 - 1)
MAX_STOPS = 16
MAX_STOP_CHARS = 1000  # holding back a possible stop string costs O(length²) per token: bounded for every client
MAX_N = 128
MAX_LOGPROBS = 20
# OpenAI settings this server supports only at their neutral values: anything else is refused by name
NEUTRAL = {"presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logit_bias": (None, {}),
           "tools": (None, []), "tool_choice": (None, "none"), "best_of": (None, 1),
           "response_format": (None, {"type": "text"})}


class APIError(Exception):
    """An error answered as OpenAI does: HTTP `status` and {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(param: str | None, message: str) -> APIError:
    return APIError(400, message, param=param)


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    model: str
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    temperature: Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 1.0
    top_k: Annotated[int, Field(ge=-1)] = 0  # vLLM's extension: 0 or -1 keeps every token
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: Annotated[str, Field(max_length=MAX_STOP_CHARS)] | Annotated[
        list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]], Field(max_length=MAX_STOPS)] | None = None
    seed: Annotated[int, INT64] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @pydantic.model_validator(mode="after")
    def _refuse_unsupported(self):
        for name, value in (self.model_extra or {}).items():
            if name in NEUTRAL and value not in NEUTRAL[name] and not (name == "best_of" and value == self.n):
                raise ValueError(f"{name}: not supported by this server (only {NEUTRAL[name][0]!r})")
        return self

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    include_usage: bool = False


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(_Request):
    """/v1/completions: prompt is a string, a list of token ids, or a batch of either (choices of prompt i are
    i * n ... i * n + n - 1, as OpenAI numbers them). max_tokens defaults to 16, as OpenAI's does."""

    prompt: str | Annotated[list[str], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    echo: Literal[False] = False
    suffix: None = None

    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")  # name, ... pass through to the chat template

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def template_message(self) -> dict[str, Any]:
        """The message as chat templates expect it: content one string (text parts joined)."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {**(self.model_extra or {}), "role": self.role, "content": content}


class ChatCompletionRequest(_Request):
    """/v1/chat/completions: max_tokens (or max_completion_tokens) defaults to the rest of the context;
    logprobs: bool with top_logprobs alternatives per token."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None

    @pydantic.model_validator(mode="after")
    def _top_logprobs_need_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs set to true")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse_request(cls: type[_Request], raw: bytes) -> _Request:
    """The validated request, or a 400 APIError naming the first bad field (pydantic's location as
    `messages[0].content`, the deepest of a union's errors; the field a model validator names in its
    message)."""
    try:
        return cls.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        # a union's members each report an error: the one that got furthest into the value says most
        error = max(exc.errors(include_url=False), key=lambda e: len(e["loc"]))
        if error["type"] == "json_invalid":
            raise bad_request(None, f"the body is not valid JSON: {error['ctx'].get('error', '')}") from None
        param = error_param(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if param is None and ":" in message:  # a model validator's "field: why"
            param = message.split(":", 1)[0]
        raise bad_request(param, f"{param or 'body'}: {message}" if not message.startswith(f"{param}:")
                          else message) from None


def error_param(loc: tuple) -> str | None:
    """pydantic's error location as OpenAI names a parameter: ("messages", 0, "content") -> messages[0].content;
    union-member tags (`str`, `list[int]`, function-after[...]) are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in {"str", "int", "float", "bool", "list", "none", "dict"} or \
                part.startswith(("function-", "constrained-", "json-or-python")):
            continue
        else:
            out += f".{part}" if out else part
    return out or None


CompletionRequest.model_rebuild()
ChatCompletionRequest.model_rebuild()
