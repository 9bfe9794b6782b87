"""Greedy decoding with a KV cache (memory.generate) on a tiny model."""

import warnings

import torch

from memory.generate import greedy_answer, greedy_reply
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
