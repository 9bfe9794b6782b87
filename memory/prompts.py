"""Prompt rendering with the model's own chat template, and answer-token alignment.

A *pass* is one token sequence: the rendered chat prompt (P tokens) followed by the answer
tokens a_1..a_k and the end-of-turn token. The rows QF constrains are positions
P-1 .. P+k-1: those whose next-token prediction is an answer token or the end of turn.
The instructed pass puts the instruction in the system message; the plain pass renders the
query exactly as chat inference will (same system prompt, no instruction).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_PROBE = "\x01qf-probe\x01"


@dataclass(frozen=True)
class Pass:
    input_ids: torch.Tensor  # (1, P + k): prompt + answer tokens (the final end-of-turn is only a target)
    prompt_len: int  # P
    targets: tuple[int, ...]  # a_1..a_k, eot

    @property
    def rows(self) -> torch.Tensor:
        """Positions P-1 .. P+k-1, whose next token is a target."""
        return torch.arange(self.prompt_len - 1, self.prompt_len - 1 + len(self.targets))


def chat_messages(query: str, system: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    return messages + [{"role": "user", "content": query}]


def instructed_system(instruction: str, system: str | None) -> str:
    """The instructed pass's system message: the chat's system prompt (if any), then the instruction."""
    return instruction if not system else f"{system}\n\n{instruction}"


def render_prompt(tokenizer, query: str, system: str | None = None) -> list[int]:
    """Token ids of the chat prompt up to and including the assistant header."""
    return render_conversation(tokenizer, chat_messages(query, system))


def render_conversation(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a whole conversation, ending with the assistant header."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False).input_ids


def end_of_turn_id(tokenizer) -> int:
    """The token the chat template puts right after an assistant message (e.g. <|im_end|>)."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    tail = text[text.index(_PROBE) + len(_PROBE):]
    ids = tokenizer(tail, add_special_tokens=False).input_ids
    if ids and ids[0] in tokenizer.all_special_ids:
        return ids[0]
    if tokenizer.eos_token_id is None:
        raise ValueError("cannot tell this tokenizer's end-of-turn token: its chat template has none and eos is unset")
    return tokenizer.eos_token_id


def answer_ids(tokenizer, answer: str) -> list[int]:
    """The answer as the model emits it after the assistant header (no special tokens)."""
    return tokenizer(answer, add_special_tokens=False).input_ids


def build_pass(tokenizer, query: str, answer: str, system: str | None = None,
               answer_tokens: tuple[int, ...] | None = None) -> Pass:
    """The pass of ``query`` answered by ``answer`` (as ``answer_tokens`` when given: e.g. the tokens
    the model emitted, which need not be the text's own tokenization)."""
    prompt = render_prompt(tokenizer, query, system)
    targets = list(answer_tokens or answer_ids(tokenizer, answer)) + [end_of_turn_id(tokenizer)]
    ids = torch.tensor([prompt + targets[:-1]])
    return Pass(input_ids=ids, prompt_len=len(prompt), targets=tuple(targets))
