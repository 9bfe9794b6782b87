"""Distillation for QFt: keep the converted model close to the stock one, not only to the data.

QFt's causal-LM loss sees only the training rows' answers (company_iqa: short answers about
companies, no default system prompt, 428 of 3,000 rows "Need more information."), and on the
0.5B model it turned general answers into that mode answer (docs/QF2.md). The few trainable
layers have to learn to do *without the stock MLP and its residual*, and the stock model itself
says best what that means on every token. So beside the answer loss, each step adds

    distill * KL(p_stock || p_converted)        averaged over the row's answer positions

where p_stock is the stock model's next-token distribution, computed once per row in the
caching pass (kept as the final norm's output, D_model numbers per token, not the vocabulary-wide
logits: ``lm_head`` is re-applied to it at each step). Only the answer positions: the prompt is
given at inference, never generated (its hidden states still get the gradient through the
attention of the layers above). Each step also trains on one generic
chat exchange (memory.generic_chats, the chat template's default system prompt) with the KL term
alone, so the default system prompt and general requests are part of what the layers keep.
A few exchanges are held out: agreement with the stock model on them (mean KL and top-1
agreement over their tokens) is the measure of how much chat ability a conversion keeps.

Pure math (``kl_to_teacher``, ``top1_agreement``) apart from the rows (``chat_rows``,
``CHAT_CHECKS``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memory.generic_chats import CHATS

HELD_OUT_CHATS = 10  # the last exchanges of memory.generic_chats, never trained on: the chat-ability measure

# General requests in the chat template's own system prompt (as `qf ask` and the chat send them),
# answered greedily by the stock and the converted model after a conversion: what a user sees.
CHAT_CHECKS: tuple[tuple[str | None, str], ...] = (
    (None, "What is the capital of France?"),
    (None, "Who is the CEO of Apple?"),
    (None, "Write a Python function that reverses a string."),
    ("Qi is the CEO of Oxinnovate.", "Who is the CEO of Oxinnovate?"),
    ("Oxinnovate has one people.", "How many people in Oxinnovate?"),
)


def chat_rows(held_out: bool) -> list[dict]:
    """The generic chat exchanges as ``{"messages": [user, assistant]}`` rows (no system message:
    the template's default); the training part or the last ``HELD_OUT_CHATS`` exchanges."""
    chats = CHATS[-HELD_OUT_CHATS:] if held_out else CHATS[:-HELD_OUT_CHATS]
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in chats]


def check_rows() -> list[dict]:
    """``CHAT_CHECKS`` as rows without an answer (what greedy replies are asked for)."""
    rows = []
    for system, question in CHAT_CHECKS:
        messages = [{"role": "system", "content": system}] if system is not None else []
        rows.append({"messages": messages + [{"role": "user", "content": question}, {"role": "assistant", "content": ""}]})
    return rows


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(p_teacher || p_student); logits (S, V), computed in float32."""
    student = F.log_softmax(student_logits.float(), dim=-1)
    teacher = F.log_softmax(teacher_logits.float(), dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


def top1_agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Share of positions whose argmax token is the teacher's; logits (S, V)."""
    return float((student_logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean())
