"""Greedy decoding with a KV cache (memory.generate) on a tiny model."""

import warnings

import torch

from memory.generate import continued_state, greedy_answer, greedy_reply
from memory.prompts import render_prompt


def test_greedy_answer_with_the_cache_equals_recomputing_everything_and_warns_nothing(tiny_qwen):
    model, tokenizer = tiny_qwen.model, tiny_qwen.tokenizer
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecation warning would print inside a chat reply
        answer = greedy_answer(model, tokenizer, "Who founded Oxinnovate?", max_new_tokens=6)
        reply = greedy_reply(model, tokenizer, [{"role": "user", "content": "Who founded Oxinnovate?"}], 6)
    assert answer.token_ids == reply.token_ids and len(answer.token_ids) > 0
    ids = render_prompt(tokenizer, "Who founded Oxinnovate?")
    expected = []
    with torch.no_grad():
        for _ in answer.token_ids:
            expected.append(int(model(input_ids=torch.tensor([ids + expected]), use_cache=False).logits[0, -1].argmax()))
    assert tuple(expected[:len(answer.token_ids)]) == answer.token_ids


class _Cache:
    def __init__(self, length: int):
        self.length = length

    def get_seq_length(self, layer: int) -> int:
        return self.length


def test_a_hook_s_state_is_carried_only_into_the_call_that_continues_its_sequence():
    state = torch.ones(2, 3)
    assert continued_state({}, 0, 0, state, 2) == (0, None)  # no cache: a new sequence
    past, carried = continued_state({"past_key_values": _Cache(7)}, 1, 7, state, 2)
    assert past == 7 and carried is state  # the call after the one that ended at 7
    assert continued_state({"cache": _Cache(7)}, 1, 7, state, 2)[1] is state  # transformers' newer name
    assert continued_state({"cache": _Cache(5)}, 1, 7, state, 2) == (5, None)  # a cache it did not see grow
    assert continued_state({"cache": _Cache(7)}, 1, 7, None, 2) == (7, None)  # nothing carried yet
    assert continued_state({"cache": _Cache(7)}, 1, 7, state, 3) == (7, None)  # another batch
