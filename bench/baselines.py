"""The methods QF is measured against, behind one small interface.

- ``FineTune`` (FT-L): the same matrix QF edits (``down_proj`` of the edit layer) fine-tuned with
  Adam on the target tokens of the plain prompt until every target token is the top-1 prediction
  or a step cap is reached; sequential edits continue from the previous weights (a fresh Adam per
  consolidation, as EasyEdit's FT does per edit). Only that matrix gets gradients.
- ``InContext`` (ICL): no weight change; the case's own instruction stays in context when the case
  is evaluated (the ceiling QF tries to internalize).

Every method leaves the base weights as it found them after ``restore()``.
"""

from __future__ import annotations

import logging

import torch

from bench.datasets import EditCase, Poser, instruction_for, right_padded

log = logging.getLogger(__name__)


class EditMethod:
    """Interface: ``edit`` a batch of cases (one consolidation), ``context`` at evaluation, ``restore``."""

    name = "none"

    def edit(self, cases: list[EditCase]) -> dict:
        """Apply one consolidation of ``cases``; returns per-consolidation details (may be empty)."""
        return {}

    def context(self, case: EditCase) -> str | None:
        """What stays in context when ``case`` is evaluated (None: nothing)."""
        return None

    def restore(self) -> None:
        """Put the base weights back."""

    def notes(self, case: EditCase) -> dict:
        """What the method decided for ``case``, kept in its per-case record (e.g. QF's phrasings)."""
        return {}


class InContext(EditMethod):
    name = "icl"

    def __init__(self, poser: Poser):
        self.poser = poser

    def context(self, case: EditCase) -> str | None:
        return instruction_for(case, self.poser.template)


class FineTune(EditMethod):
    name = "ft"

    def __init__(self, model, poser: Poser, parameter: str, base: torch.Tensor, steps: int = 25, lr: float = 5e-4):
        self.model, self.poser, self.parameter = model, poser, parameter
        self.base = base.detach().cpu().clone()  # W0, to restore
        self.steps, self.lr = steps, lr

    @property
    def weight(self) -> torch.nn.Parameter:
        return self.model.get_parameter(self.parameter)

    def _batch(self, cases: list[EditCase]):
        pairs = [(self.poser.prompt_ids(c.prompt), self.poser.answer_ids(c.target_new)) for c in cases]
        ids, mask, rows = right_padded(pairs, self.poser.pad_id)
        batch_idx = torch.tensor([i for i, r in enumerate(rows) for _ in r])
        positions = torch.tensor([p for r in rows for p in r])
        targets = torch.tensor([t for _, cont in pairs for t in cont])
        return ids, mask, batch_idx, positions, targets

    def edit(self, cases: list[EditCase]) -> dict:
        """Adam steps on the summed per-case mean NLL of the targets until all are top-1."""
        device = self.weight.device
        ids, mask, batch_idx, positions, targets = (t.to(device) for t in self._batch(cases))
        flags = {name: p.requires_grad for name, p in self.model.named_parameters()}
        for p in self.model.parameters():
            p.requires_grad_(False)
        weight = self.weight
        weight.requires_grad_(True)
        optimizer = torch.optim.Adam([weight], lr=self.lr)
        steps = 0
        try:
            for steps in range(self.steps + 1):
                logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[batch_idx, positions]
                if bool((logits.argmax(-1) == targets).all()) or steps == self.steps:
                    break
                nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
                loss = torch.zeros(len(cases), device=device).index_add(0, batch_idx, nll)
                counts = torch.bincount(batch_idx, minlength=len(cases)).clamp(min=1)
                (loss / counts).sum().backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        finally:
            weight.grad = None
            for name, p in self.model.named_parameters():
                p.requires_grad_(flags[name])
        return {"steps": steps}

    @torch.no_grad()
    def restore(self) -> None:
        self.weight.copy_(self.base.to(self.weight.device, self.weight.dtype))
