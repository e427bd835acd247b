"""One HTTP request's generation: an engine request per prompt, its outputs fed from the engine thread into an
asyncio queue, and its choices' text (choice i * n + j is sample j of prompt i, as OpenAI numbers them)."""
from __future__ import annotations

import asyncio
import functools
from typing import AsyncIterator

from r1_megatron.rollout import SamplingParams

from .engine_loop import EngineLoop, Overloaded, ShuttingDown
from .protocol import APIError, bad_request
from .sample_text import SampleText, TextDelta


class GenerationJob:
    def __init__(self, engine_loop: EngineLoop, prompts: list[list[int]], params: SamplingParams, tokenizer,
                 stops: list[str], prompt_param: str):
        """Submit every prompt (503 APIError when the server is full or shutting down; what was submitted is
        aborted then). prompt_param names the prompt in a 400 the engine gives ("prompt" or "messages")."""
        self.engine_loop, self.params, self.prompts, self.prompt_param = engine_loop, params, prompts, prompt_param
        self.choices = [SampleText(tokenizer, stops, ids) for ids in prompts for _ in range(params.n)]
        self._aio = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self.request_ids: list[str] = []
        self._open: set[int] = set()
        try:
            for p, ids in enumerate(prompts):
                self.request_ids.append(engine_loop.submit(ids, params, functools.partial(self._sink, p)))
                self._open.add(p)
        except (Overloaded, ShuttingDown) as exc:
            self.cancel()
            raise APIError(503, str(exc), type="server_overloaded" if isinstance(exc, Overloaded)
                           else "server_shutting_down") from None

    @property
    def prompt_tokens(self) -> int:
        return sum(map(len, self.prompts))

    @property
    def completion_tokens(self) -> int:
        return sum(c.num_tokens for c in self.choices)

    def _sink(self, p: int, out) -> None:
        """Engine thread: hand prompt p's output (or the engine's refusal) to the handler's event loop; nothing
        when that loop has closed (uvicorn forced to exit while requests ran: nobody is left to read it)."""
        try:
            self._aio.call_soon_threadsafe(self._queue.put_nowait, (p, out))
        except RuntimeError:
            pass

    async def deltas(self) -> AsyncIterator[tuple[int, TextDelta]]:
        """(choice index, its next text delta) until every choice has finished; a stop string's sample is
        aborted in the engine as soon as it matches."""
        while self._open:
            p, out = await self._queue.get()
            if isinstance(out, ValueError):
                self._open.discard(p)
                raise bad_request(self.prompt_param, f"{self.prompt_param}: {out}")
            if isinstance(out, BaseException):
                self._open.discard(p)
                raise APIError(500, f"the engine failed: {out!r}", type="server_error")
            for sample in out.samples:
                index = p * self.params.n + sample.index
                delta = self.choices[index].add(sample)
                if delta is None:
                    continue
                if delta.stopped and not out.finished:
                    self.engine_loop.abort(self.request_ids[p], index=sample.index)
                yield index, delta
            if out.finished:
                self._open.discard(p)

    def cancel(self) -> None:
        """Abort every prompt that has not finished (a disconnected client, a failed submit)."""
        for p in sorted(self._open):
            self.engine_loop.abort(self.request_ids[p])
        self._open.clear()
