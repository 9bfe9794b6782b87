"""Near questions: the shipped questions of fact whose answering key is nearest a fact's, as its anchors (issue 7).

CounterFact's neighbours, the ones an edit breaks, are other subjects the model gives the *same*
answer for the same relation ("Danielle Darrieux's mother tongue is" -> French: its neighbours
are other French speakers). At the edited layer the key of the answering position says mostly
"French is next", so the edit "French-speaker -> English" reaches every prompt about to say
French. Anchors made by swapping the subject (memory.anchors) ask the same relation of subjects
with other answers; question keys (memory.preserve) weigh all questions of fact alike.

A near question is picked by the key itself: of the shipped factual prompts (memory.factual_prompts,
2,080 positions, their keys collected once per checkpoint and layer and cached, memory.preserve),
the ones whose answering key has the largest cosine with the fact's first row's (its last prompt
token, where the first answer token is decided) are the questions the model answers most like
this one; holding them is holding the fact's old answer for other subjects. Prompts that name the
fact's subject are skipped (they ask about the fact itself). They become anchor rows of the fact
(memory.fact.with_anchors; held exactly, or softly with memory.soft_anchors) and are stored with its
rows, so the ledger's rebuild and undo stay exact. No forward pass: one (n x D) product per fact.
"""

from __future__ import annotations

import torch


class QuestionBank:
    """The answering keys (n, D) of ``texts``, the prompts they were captured on, in order."""

    def __init__(self, keys: torch.Tensor, texts: list[str]):
        if keys.ndim != 2 or keys.shape[0] != len(texts):
            raise ValueError(f"{len(texts)} prompts need {len(texts)} keys, not {tuple(keys.shape)}")
        self.keys, self.texts = keys.float(), list(texts)
        self._unit = self.keys / self.keys.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self._lowered = [t.lower() for t in self.texts]

    def nearest(self, key: torch.Tensor, count: int, subject: str | None = None) -> torch.Tensor:
        """The keys (count, D) of the ``count`` prompts whose key has the largest cosine with ``key``
        (D,), best first, skipping prompts that name ``subject``; fewer when fewer are left."""
        if count < 0:
            raise ValueError(f"the number of near questions must be >= 0, not {count}")
        cosine = self._unit @ (key.float() / key.float().norm().clamp_min(1e-12))
        if subject and subject.strip():
            named = torch.tensor([subject.strip().lower() in t for t in self._lowered])
            cosine = cosine.masked_fill(named, float("-inf"))
        usable = int(torch.isfinite(cosine).sum())
        return self.keys[cosine.topk(min(count, usable)).indices]
