"""Greedy decoding in the chat template: closed-book answers, the instructed answer, streaming.

One loop with a KV cache serves all of them; it yields token by token, so a caller can stream
the reply and stop it at any point (Ctrl-C in the chat stops the reply, not the program).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from memory.prompts import end_of_turn_id, render_conversation, render_prompt


@dataclass(frozen=True)
class Answer:
    text: str
    token_ids: tuple[int, ...]
    finished: bool  # ended with the end-of-turn token (not cut by max_new_tokens)


def stop_ids(tokenizer) -> list[int]:
    ids = {end_of_turn_id(tokenizer)}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def cached_forward(model, cache, **inputs):
    """One forward pass with a KV cache: (the output, the cache to pass next time).

    transformers 5.24 renamed the forward argument ``past_key_values`` (and the output field) to
    ``cache``; the old name still works there but prints a FutureWarning, which a chat shows in
    the middle of its reply. Both names are supported (5.0..5.23 only know the old one)."""
    name = cache_argument(type(model))
    out = model(**inputs, **{name: cache}, use_cache=True)
    return out, out[name]


def continued_state(kwargs: dict, layer: int, ended: int, state: torch.Tensor | None,
                    batch: int) -> tuple[int, torch.Tensor | None]:
    """For a forward pre-hook (with kwargs) on decoder layer ``layer`` that carries ``state`` (batch first)
    from one call of a generation to the next: how many positions the KV cache held before this call, and
    ``state`` where this call of ``batch`` sequences continues the one the last call ended at ``ended``
    positions, else None (a new sequence; a cache the hook did not see grow, such as a cached prefix)."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    past = cache.get_seq_length(layer) if cache is not None else 0
    if past == 0 or past != ended or state is None or state.shape[0] != batch:
        return past, None
    return past, state


@functools.cache
def cache_argument(model_class: type) -> str:
    """The KV-cache argument of this model class's forward (looked up once per class, not per token)."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


@torch.no_grad()
def greedy_tokens(model, prompt: list[int], stops: list[int], max_new_tokens: int) -> Iterator[int]:
    """Yield greedy next tokens (the stop token too, then end) with a KV cache."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    past = None
    for _ in range(max_new_tokens):
        out, past = cached_forward(model, past, input_ids=ids, logits_to_keep=1)
        token = int(out.logits[0, -1].argmax())
        yield token
        if token in stops:
            return
        ids = torch.tensor([[token]], device=device)


@torch.no_grad()
def greedy_batch(model, prompts: list[list[int]], stops: list[int], max_new_tokens: int, pad_id: int) -> list[tuple[int, ...]]:
    """Greedy continuations of left-padded prompts with a KV cache (stop token excluded)."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out_tokens: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    past = None
    for _ in range(max_new_tokens):
        out, past = cached_forward(model, past, input_ids=ids, attention_mask=mask, position_ids=positions,
                                   logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1)
        for i, token in enumerate(nxt.tolist()):
            if not done[i]:
                done[i] = token in stops
                if not done[i]:
                    out_tokens[i].append(token)
        if all(done):
            break
        ids, positions = nxt[:, None], positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return [tuple(t) for t in out_tokens]


def _answer(tokenizer, prompt: list[int], model, max_new_tokens: int) -> Answer:
    stops = stop_ids(tokenizer)
    new = list(greedy_tokens(model, prompt, stops, max_new_tokens))
    finished = bool(new) and new[-1] in stops
    if finished:
        new = new[:-1]
    return Answer(tokenizer.decode(new, skip_special_tokens=True).strip(), tuple(new), finished)


def greedy_answer(model, tokenizer, query: str, system: str | None = None, max_new_tokens: int = 64) -> Answer:
    """The greedy answer to one question (single turn, the chat's system prompt)."""
    return _answer(tokenizer, render_prompt(tokenizer, query, system), model, max_new_tokens)


def greedy_reply(model, tokenizer, messages: list[dict[str, str]], max_new_tokens: int = 64) -> Answer:
    """The greedy reply to a conversation, rendered as it is (its own system message, if any)."""
    return _answer(tokenizer, render_conversation(tokenizer, messages), model, max_new_tokens)


def stream_reply(model, tokenizer, messages: list[dict[str, str]], max_new_tokens: int = 512) -> Iterator[str]:
    """Yield the reply to a conversation as text pieces (decoded incrementally, UTF-8 safe)."""
    stops = stop_ids(tokenizer)
    tokens: list[int] = []
    shown = ""
    for token in greedy_tokens(model, render_conversation(tokenizer, messages), stops, max_new_tokens):
        if token in stops:
            break
        tokens.append(token)
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            continue
        if len(text) > len(shown):
            yield text[len(shown):]
            shown = text
