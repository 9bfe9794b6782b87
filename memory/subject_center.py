"""The subject-centered gate: once its subject is named, a fact's neuron reads which question is asked (issue 7).

Under gate 1 a fact's neurons fire only where its subject has been named, above ``tau_named`` on the
cosine of the MLP input with the row's key (memory.subject_gate). Both the fact's question and any
other question about its subject share the subject's part of that input, so the raw cosine says
little about *which* question is asked: on CounterFact a threshold that passes 90% of the real
paraphrases passes 71% of other questions about the subject (the 0.5B, 156 labelled records,
examples/paraphrase_or_other_question.py). Taking the cosine after removing what every question about
the subject shares, both vectors centered on the subject's mean MLP input,

    cos_c(x, t) = cos(x - m_f, x'_t - m_f),

where ``m_f`` is that input averaged at the answering position of shipped questions of other relations
asked of the fact's subject (SUBJECT_MEAN_RELATIONS, memory.factual_prompts), a threshold passing 90%
of the real paraphrases passes 44% of the other questions (docs/RESULTS.md, "The subject-centered
gate"). With ``subject_centered`` the neurons use ``cos_c`` wherever their subject is named (in the
values' solve too) and the raw cosine elsewhere; ``tau_named`` is then a threshold on ``cos_c``.

The mean costs one packed forward pass of the subject's questions when the first fact about the subject
is learned (QFEditor keeps it for the next fact about the same subject), and is stored with the fact's
rows (the ledger's rebuild needs no forward pass). At inference the centered cosine of every neuron
comes from two products with the MLP input, ``x @ K_c^T`` (one centered key per neuron) and ``x @ M^T``
(one mean per subject), and two constants per neuron (``|x - m|^2 = |x|^2 - 2 x.m + |m|^2``).
"""

from __future__ import annotations

import torch

from memory import factual_prompts
from memory.subject_gate import unit_rows

# Which shipped relations' questions give a subject's mean: (kind, relation index) into
# factual_prompts.KINDS, four of each kind, so the mean is over questions of every kind whatever the
# subject is (a question of another kind's relation still names the subject).
SUBJECT_MEAN_RELATIONS = ((0, 0), (0, 1), (0, 6), (0, 12), (1, 0), (1, 2), (1, 5), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3))


def subject_mean_questions(subject: str, chat: bool) -> list[str]:
    """The shipped questions whose MLP inputs at the answering position average to ``subject``'s mean:
    chat questions for the chat template, plain completions for the plain one."""
    return [factual_prompts.KINDS[kind][1][relation][1 if chat else 0].format(subject)
            for kind, relation in SUBJECT_MEAN_RELATIONS]


def centered_keys(X: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Rows (T, N) centered on ``mean`` (N,), unit length, float32."""
    return unit_rows(X.float() - mean.float())


def centered_offsets(means: torch.Tensor, keys: torch.Tensor, subject_of: torch.Tensor) -> torch.Tensor:
    """The per-neuron constants of ``centered_cosines`` (2, J): ``m_j . k_j`` and ``|m_j|^2`` for each neuron
    j's subject mean ``m_j = means[subject_of[j]]`` (means (S, N)) and centered unit key k_j (J, N)."""
    m = means.float()[subject_of.clamp_min(0)] if means.shape[0] else torch.zeros_like(keys)
    return torch.stack([(m * keys).sum(-1), (m * m).sum(-1)])


def centered_cosines(x: torch.Tensor, means: torch.Tensor, keys: torch.Tensor, subject_of: torch.Tensor,
                     offsets: torch.Tensor) -> torch.Tensor:
    """``cos(x - m_j, k_j)`` for inputs x (..., N) and every neuron j's subject mean ``m_j = means[subject_of[j]]``
    (means (S, N), one per subject) and centered unit key k_j (J, N) -> (..., J), float32, from two products
    with x and the neurons' ``centered_offsets``, without forming ``x - m_j`` for each j (a neuron with no
    subject, ``subject_of`` -1, gets a meaningless value: it never reads the centered cosine)."""
    x = x.float()
    along = x @ keys.T - offsets[0]
    distance2 = (x * x).sum(-1, keepdim=True) - 2 * (x @ means.T)[..., subject_of.clamp_min(0)] + offsets[1]
    return along / distance2.clamp_min(1e-12).sqrt()
