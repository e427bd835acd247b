"""One SFT conversation -> tokens and the per-token flags of what is trained on, for each SFT template.

Templates (docs/sft_data.md shows each on a worked example):

- ``chat``: the tokenizer's chat template renders the whole conversation. Trained: every assistant turn's tokens
  and the end-of-turn token that closes it (the tokenizer's EOS, or ``end_of_turn_token``), on every assistant
  turn; system/user turns, the generation prompt (``<|im_start|>assistant\\n``) and template glue after the
  end-of-turn token (ChatML's ``\\n``) are not. Assistant spans are found by rendering prefixes: the
  conversation up to turn i with the generation prompt, and up to and including turn i, must each be a token
  prefix of the next rendering and of the whole. A template that is not prefix-consistent (one that drops
  earlier turns' reasoning, or whose tokens merge across a turn boundary) is an error, never a guessed mask.
  An assistant message's reasoning goes in front of its content as ``<think>\\n{reasoning}\\n</think>\\n\\n``.
- ``r1_distill``: DeepSeek-R1's distillation format. The prompt is every message before the last (an assistant
  message) rendered by the chat template with the generation prompt (earlier assistant turns without their
  separate reasoning, as R1's own template and DeepSeek's API give the context); the response, all trained, is
  ``<think>\\n{reasoning}\\n</think>\\n\\n{answer}`` + EOS (an answer that already starts with ``<think>`` is used
  as it is; no reasoning gives an empty think block). When the generation prompt already ends with
  ``<think>\\n`` (templates that open the block themselves) the response does not repeat it.
- ``r1_cold_start``: R1's cold-start format ``|special_token|<reasoning_process>|special_token|<summary>``, the
  prompt as for ``r1_distill``, the response ``{SEP}{reasoning}{SEP}{summary}`` + EOS. R1 did not publish the
  separator token: SEP is ``cold_start_separator`` (the literal ``|special_token|`` by default; set a special
  token of your tokenizer). The reasoning is the message's reasoning, or a leading ``<think>...</think>`` block
  of the answer; a response that already starts with SEP is used as it is.

The EOS of the r1 templates is appended as a token id, so it is one token whatever the tokenizer does with text.
"""
from __future__ import annotations

import dataclasses
import enum
import re
from typing import Any, Sequence

from r1_megatron.tokenizer import Tokenizer

COLD_START_SEPARATOR = "|special_token|"
ROLES = ("system", "user", "assistant")
THINK_OPEN = "<think>\n"
_THINK_BLOCK = re.compile(r"<think>\n?(?P<reasoning>.*?)\n?</think>\s*(?P<answer>.*)", re.DOTALL)


class SFTTemplate(str, enum.Enum):
    CHAT = "chat"
    R1_COLD_START = "r1_cold_start"
    R1_DISTILL = "r1_distill"


class RenderError(ValueError):
    """A conversation this template cannot render (the dataset adds the file, line and field)."""

    def __init__(self, problem: str, kind: str):
        super().__init__(problem)
        self.kind = kind  # the stats key when on_error=skip


@dataclasses.dataclass(frozen=True)
class Message:
    role: str
    content: str
    reasoning: str | None = None  # an assistant's separate reasoning (DeepSeek's `reasoning_content`)

    def with_reasoning_inline(self) -> dict[str, Any]:
        """The message as chat templates read it, the reasoning in front of the content as a think block."""
        if self.reasoning is None:
            return {"role": self.role, "content": self.content}
        _no_double_reasoning(self)
        return {"role": self.role, "content": f"{THINK_OPEN}{self.reasoning}\n</think>\n\n{self.content}"}


def _no_double_reasoning(message: Message) -> None:
    if message.content.lstrip().startswith("<think>"):
        raise RenderError("has both a separate reasoning and an answer starting with <think>: one of them must go",
                          "double_reasoning")


def split_think(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a text that starts with a ``<think>...</think>`` block, else (None, text)."""
    match = _THINK_BLOCK.fullmatch(text.lstrip())
    return (match["reasoning"], match["answer"]) if match else (None, text)


def distill_response(message: Message) -> str:
    if message.reasoning is None and message.content.lstrip().startswith("<think>"):
        return message.content
    return message.with_reasoning_inline()["content"] if message.reasoning is not None \
        else f"{THINK_OPEN}\n</think>\n\n{message.content}"


def cold_start_response(message: Message, separator: str) -> str:
    if message.content.startswith(separator):
        return message.content
    reasoning, summary = message.reasoning, message.content
    if reasoning is None:
        reasoning, summary = split_think(summary)
    else:
        _no_double_reasoning(message)
    if reasoning is None:
        raise RenderError("r1_cold_start needs the reasoning: a reasoning field (reasoning_content for messages) "
                          "or an answer starting with <think>...</think>", "missing_reasoning")
    return f"{separator}{reasoning}{separator}{summary}"


class ChatRenderer:
    """Renders conversations for one tokenizer and template; ``render`` returns (tokens, trained flags)."""

    def __init__(self, tokenizer: Tokenizer, template: SFTTemplate, cold_start_separator: str = COLD_START_SEPARATOR,
                 end_of_turn_token: str | None = None):
        if tokenizer.chat_template is None:
            raise ValueError(f"SFT template {template.value!r} renders prompts with the tokenizer's chat template, "
                             f"and {tokenizer.source} has none (tokenizer_config.json or chat_template.jinja)")
        self.tokenizer, self.template, self.separator = tokenizer, SFTTemplate(template), cold_start_separator
        self.end_of_turn_token = end_of_turn_token or tokenizer.special_tokens.get("eos_token")
        self.end_of_turn_id = tokenizer.eos_token_id if end_of_turn_token is None \
            else tokenizer.token_to_id(end_of_turn_token)
        if self.end_of_turn_id is None:
            raise ValueError(f"end_of_turn_token {end_of_turn_token!r} is not a token of {tokenizer.source}")

    def render(self, messages: Sequence[Message]) -> tuple[list[int], list[bool]]:
        if self.template is SFTTemplate.CHAT:
            return self._render_chat(messages)
        return self._render_last_response(messages)

    def _encode_chat(self, messages: Sequence[dict[str, Any]], generation_prompt: bool) -> list[int]:
        return self.tokenizer.encode(self._chat_text(messages, generation_prompt))

    def _chat_text(self, messages: Sequence[dict[str, Any]], generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt)
        except Exception as e:  # jinja2's TemplateError, or whatever the template's own raise_exception says
            raise RenderError(f"the chat template cannot render it: {type(e).__name__}: {e}", "template") from None

    def _render_chat(self, messages: Sequence[Message]) -> tuple[list[int], list[bool]]:
        dicts = [m.with_reasoning_inline() for m in messages]
        full = self._encode_chat(dicts, generation_prompt=False)
        trained = [False] * len(full)
        for i, message in enumerate(messages):
            if message.role == "assistant":
                start, end = self._assistant_span(dicts, i, full)
                trained[start:end] = [True] * (end - start)
        return full, trained

    def _assistant_span(self, dicts: list[dict[str, Any]], i: int, full: list[int]) -> tuple[int, int]:
        """[start, end) in ``full`` of assistant message i's tokens through its end-of-turn token."""
        before = self._encode_chat(dicts[:i], generation_prompt=True)
        # the last turn's rendering is the whole conversation's: skip encoding the (long) text twice
        through = full if i + 1 == len(dicts) else self._encode_chat(dicts[:i + 1], generation_prompt=False)
        what = f"messages 1-{i} with the generation prompt" if i else "the generation prompt alone"
        self._require_prefix(before, through, what, f"messages 1-{i + 1}")
        self._require_prefix(through, full, f"messages 1-{i + 1}", f"all {len(dicts)} messages")
        turn = through[len(before):]
        if self.end_of_turn_id not in turn:
            raise RenderError(f"the chat template does not close assistant message {i + 1} with the end-of-turn "
                              f"token {self.end_of_turn_token!r}; set end_of_turn_token to the token that closes "
                              f"its turns", "template")
        last = len(turn) - 1 - turn[::-1].index(self.end_of_turn_id)
        return len(before), len(before) + last + 1

    def _require_prefix(self, prefix: list[int], tokens: list[int], what: str, of: str) -> None:
        if tokens[:len(prefix)] == prefix:
            return
        at = next((k for k, (a, b) in enumerate(zip(prefix, tokens)) if a != b), min(len(prefix), len(tokens)))
        seen = self.tokenizer.decode(tokens[max(0, at - 8):at + 8])
        raise RenderError(f"the chat template is not prefix-consistent: the tokens of {what} are not a prefix of "
                          f"those of {of} (they differ at token {at}, around {seen!r}): the template rewrites "
                          f"earlier turns (e.g. drops their reasoning) or tokens merge across a turn boundary, so "
                          f"the assistant turns cannot be masked; use template r1_distill (trains the last turn "
                          f"only) or a prefix-consistent chat template", "template_not_prefix_consistent")

    def _render_last_response(self, messages: Sequence[Message]) -> tuple[list[int], list[bool]]:
        *context, last = messages
        if last.role != "assistant":
            raise RenderError(f"{self.template.value} trains the last message, and message {len(messages)} has "
                              f"role {last.role!r}, not assistant", "last_not_assistant")
        # earlier turns without their reasoning, as DeepSeek's API and R1's chat template give the context
        prompt = self._chat_text([{"role": m.role, "content": m.content} for m in context], generation_prompt=True)
        if self.template is SFTTemplate.R1_DISTILL:
            response = distill_response(last)
            if prompt.endswith(THINK_OPEN) and response.startswith(THINK_OPEN):
                response = response[len(THINK_OPEN):]  # the generation prompt opened the think block already
        else:
            response = cold_start_response(last, self.separator)
        prompt_ids = self.tokenizer.encode(prompt)
        response_ids = self.tokenizer.encode(response) + [self.end_of_turn_id]
        return prompt_ids + response_ids, [False] * len(prompt_ids) + [True] * len(response_ids)
