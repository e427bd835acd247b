"""OpenAI response and stream-chunk objects (plain dicts, serialised as JSON) from a job's choices."""
from __future__ import annotations

import json
import time
import uuid

from .reasoning import ReasoningParser, split_reasoning
from .sample_text import TextDelta


def response_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """completion_tokens counts every choice's tokens (all n samples), up to the token that completed a stop
    string; an EOS token counts, as it was generated."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def envelope(id_: str, object_: str, model: str, created: int | None = None, **fields) -> dict:
    return {"id": id_, "object": object_, "created": created or int(time.time()), "model": model, **fields}


def sse(payload: dict | str) -> str:
    """One server-sent event: `data: <json>` (or `data: [DONE]`) and a blank line."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


class LogprobsBuilder:
    """Token logprobs in either OpenAI format, accumulated over a choice's deltas.

    completions (legacy): {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}.
    chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}.
    A token's text is its own decode (a byte-level BPE piece of a multi-byte character decodes to U+FFFD);
    bytes are that text's UTF-8 bytes."""

    def __init__(self, tokenizer, chat: bool):
        self.tokenizer, self.chat = tokenizer, chat

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def of(self, delta: TextDelta) -> dict:
        """The logprobs of delta's tokens in this builder's format."""
        texts = [self.token_text(t) for t in delta.token_ids]
        if self.chat:
            return {"content": [{**self._entry(text, lp), "top_logprobs": [self._entry(self.token_text(i), v)
                                                                             for i, v in top]}
                                for text, lp, top in zip(texts, delta.logprobs, delta.top_logprobs)]}
        return {"tokens": texts, "token_logprobs": list(delta.logprobs),
                "top_logprobs": [self._by_text(top) for top in delta.top_logprobs],
                "text_offset": list(delta.text_offsets)}

    def _by_text(self, top: list[tuple[int, float]]) -> dict[str, float]:
        """{token text: logprob}; tokens with one text (pieces of characters, all U+FFFD) keep the likeliest."""
        out: dict[str, float] = {}
        for token_id, logprob in top:
            out.setdefault(self.token_text(token_id), logprob)
        return out

    @staticmethod
    def _entry(text: str, logprob: float) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    def merge(self, into: dict | None, more: dict) -> dict:
        """Two logprobs objects of one choice, one after the other."""
        if into is None:
            return more
        return {key: into[key] + more[key] for key in into}


class CompletionFormat:
    """/v1/completions objects: `text_completion` responses and chunks, the raw text (no reasoning split)."""

    object = "text_completion"

    def __init__(self, model: str, num_choices: int, logprobs: LogprobsBuilder | None):
        self.model, self.logprobs = model, logprobs
        self.id, self.created = response_id("cmpl"), int(time.time())
        self._logprobs: list[dict | None] = [None] * num_choices

    def opening(self) -> list[dict]:
        return []

    def chunk(self, index: int, delta: TextDelta) -> dict | None:
        if not (delta.text or delta.finish_reason or (self.logprobs and delta.token_ids)):
            return None
        choice = {"index": index, "text": delta.text, "logprobs": self.logprobs.of(delta) if self.logprobs else None,
                  "finish_reason": delta.finish_reason}
        return envelope(self.id, self.object, self.model, self.created, choices=[choice])

    def add(self, index: int, delta: TextDelta) -> None:
        """Accumulate a delta for the whole response (the text itself is the job's)."""
        if self.logprobs:
            self._logprobs[index] = self.logprobs.merge(self._logprobs[index], self.logprobs.of(delta))

    def response(self, job) -> dict:
        choices = [{"index": i, "text": c.text, "logprobs": self._logprobs[i], "finish_reason": c.finish_reason}
                   for i, c in enumerate(job.choices)]
        return envelope(self.id, self.object, self.model, self.created, choices=choices,
                        usage=usage(job.prompt_tokens, job.completion_tokens))

    def usage_chunk(self, job) -> dict:
        return envelope(self.id, self.object, self.model, self.created, choices=[],
                        usage=usage(job.prompt_tokens, job.completion_tokens))


class ChatFormat(CompletionFormat):
    """/v1/chat/completions objects; the text inside <think>...</think> is `reasoning_content`, the rest
    `content` (starts_inside: the prompt already opened <think>, as R1's chat template does)."""

    object = "chat.completion"

    def __init__(self, model: str, num_choices: int, logprobs: LogprobsBuilder | None, starts_inside: bool):
        super().__init__(model, num_choices, logprobs)
        self.id, self.starts_inside = response_id("chatcmpl"), starts_inside
        self._parsers = [ReasoningParser(starts_inside=starts_inside) for _ in range(num_choices)]

    def opening(self) -> list[dict]:
        return [self._chunk(i, {"role": "assistant", "content": ""}) for i in range(len(self._parsers))]

    def chunk(self, index: int, delta: TextDelta) -> dict | None:
        parser = self._parsers[index]
        reasoning, content = parser.add(delta.text)
        if delta.finish_reason is not None:
            more_reasoning, more_content = parser.flush()
            reasoning, content = reasoning + more_reasoning, content + more_content
        message = {k: v for k, v in (("reasoning_content", reasoning), ("content", content)) if v}
        if not (message or delta.finish_reason or (self.logprobs and delta.token_ids)):
            return None
        return self._chunk(index, message, self.logprobs.of(delta) if self.logprobs else None, delta.finish_reason)

    def _chunk(self, index: int, message: dict, logprobs: dict | None = None, finish_reason: str | None = None):
        choice = {"index": index, "delta": message, "logprobs": logprobs, "finish_reason": finish_reason}
        return envelope(self.id, "chat.completion.chunk", self.model, self.created, choices=[choice])

    def response(self, job) -> dict:
        choices = []
        for i, c in enumerate(job.choices):
            reasoning, content = split_reasoning(c.text, starts_inside=self.starts_inside)
            message = {"role": "assistant", "content": content}
            if reasoning is not None:
                message["reasoning_content"] = reasoning
            choices.append({"index": i, "message": message, "logprobs": self._logprobs[i],
                            "finish_reason": c.finish_reason})
        return envelope(self.id, self.object, self.model, self.created, choices=choices,
                        usage=usage(job.prompt_tokens, job.completion_tokens))

    def usage_chunk(self, job) -> dict:
        return {**super().usage_chunk(job), "object": "chat.completion.chunk"}
