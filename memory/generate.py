"""Greedy answers in the chat template (closed-book verification, the instructed answer)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memory.prompts import end_of_turn_id, render_prompt


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


@torch.no_grad()
def greedy_answer(model, tokenizer, query: str, system: str | None = None, max_new_tokens: int = 64) -> Answer:
    prompt = render_prompt(tokenizer, query, system)
    ids = torch.tensor([prompt], device=next(model.parameters()).device)
    stops = stop_ids(tokenizer)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0],
    )
    new = out[0, ids.shape[1]:].tolist()
    finished = bool(new) and new[-1] in stops
    if finished:
        new = new[:-1]
    return Answer(text=tokenizer.decode(new, skip_special_tokens=True).strip(), token_ids=tuple(new), finished=finished)
