"""The refractory rule: a fact's neuron does not fire where the token it writes was just read (issue 7).

A key-gated neuron (memory.gated) writes one token of a fact's answer: row t's neuron moves the
model towards ``targets[t]``. Right after the model has written that token, the MLP input can still
be close enough to the row's key to fire the neuron again, most of all with the subject-centered gate
(memory.subject_center), whose centered cosine after an answer stays at 0.38-0.66 while the answer gate
passes: greedy answers then repeat the target ("football football football", docs/RESULTS.md, "1,000
CounterFact edits with the centered gate, and the repeated target"). With a refractory span n > 0, a
neuron does not fire at a position whose last n input tokens (the position's own token and the n - 1
before it, within its own sequence) hold its target, so a target written once is not written again
straight after, nor in a short loop with other tokens ("Sweden in Sweden in" needs n >= 2).

A neuron whose own row already has its target among its last n tokens is exempt: the fact's answer
repeats that token there ("1 1", "New York, New York"), and the rule would silence the very row it
was written for. In the values' solve the rule removes the same pairs (row s does not fire neuron t
when t's target is among s's last n tokens), so the fact's rows still get exactly their residual.

Each fact's rows record their last ``RECENT_TOKENS`` input tokens (FactRows.recent, stored in the
ledger), so the rebuild needs no forward pass and any span up to that many can be applied. At
inference ``RecentTokens`` reads the input ids off the embedding and carries the last tokens between
the calls of a generation with a KV cache, as memory.subject_gate.SubjectPresence carries its match.
"""

from __future__ import annotations

import torch
from torch import nn

from memory import architecture as arch
from memory.generate import continued_state
from memory.packing import pass_index

RECENT_TOKENS = 16  # the input tokens recorded per row: the most a refractory span can be
NO_TOKEN = -1  # no token there (before the sequence's start), and no target (an anchor; an exempt neuron)


def recent_windows(ids: torch.Tensor, span: int, positions: torch.Tensor | None = None,
                   carried: torch.Tensor | None = None) -> torch.Tensor:
    """The last ``span`` input tokens at every position of ``ids`` (B, P) -> (B, P, span) int64, oldest first
    (the position's own token last), NO_TOKEN before the sequence's start. A sequence starts again wherever
    ``positions`` (B or 1, P) do not increase (passes packed into one, memory.packing; a left pad); up to
    the first such start it continues ``carried`` (B, span - 1), the last tokens of the call before."""
    B, P = ids.shape
    before = torch.full((B, span - 1), NO_TOKEN, dtype=torch.int64, device=ids.device) if carried is None else \
        carried.to(ids.device, torch.int64)
    segment = torch.zeros((B, P), dtype=torch.int64, device=ids.device)
    if positions is not None and P > 1:
        segment[:] = pass_index(positions.to(ids.device))
    tokens = torch.cat([before, ids.long()], 1).unfold(1, span, 1)  # (B, P, span)
    segments = torch.cat([torch.zeros_like(before), segment], 1).unfold(1, span, 1)
    return torch.where(segments == segment[..., None], tokens, NO_TOKEN)


def row_windows(ids: list[int] | torch.Tensor, rows: int) -> torch.Tensor:
    """The last RECENT_TOKENS input tokens (rows, RECENT_TOKENS) at the last ``rows`` positions of one
    sequence ``ids``: what a fact's rows record (FactRows.recent)."""
    ids = torch.as_tensor(ids, dtype=torch.int64).reshape(1, -1)
    return recent_windows(ids, RECENT_TOKENS)[0, ids.shape[1] - rows:]


def refractory_targets(targets: torch.Tensor, recent: torch.Tensor, span: int) -> torch.Tensor:
    """Each row's target (T,) as its neuron's refractory target, NO_TOKEN where the neuron is exempt (its
    row's own last ``span`` tokens, of ``recent`` (T, >= span), hold its target) or has no target."""
    exempt = (recent[:, -span:] == targets[:, None]).any(1)
    return torch.where(exempt, NO_TOKEN, targets.long())


def holds_target(recent: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Whether the last tokens ``recent`` (..., span) hold the refractory target ``targets`` (...), elementwise
    over what the two broadcast to (NO_TOKEN: no target, never held) -> (...) bool: where the neuron must not
    fire (for every neuron at once: ``holds_target(recent[..., None, :], targets)`` -> (..., J)). One token of
    the span at a time, so no (..., J, span) tensor is made."""
    held = recent[..., 0] == targets
    for k in range(1, recent.shape[-1]):
        held |= recent[..., k] == targets
    return held & (targets != NO_TOKEN)


class RecentTokens:
    """Per position, the last ``span`` input tokens of the current forward pass (``recent``, (B, P, span)):
    a pre-hook on the input embeddings keeps the ids, one on the first decoder layer (which sees the KV
    cache and the positions) makes the windows, carrying the last tokens between the calls of one
    sequence. A forward pass given embeddings instead of ids has no tokens: NO_TOKEN everywhere."""

    def __init__(self, model: nn.Module, span: int):
        self.span = span
        self.recent: torch.Tensor | None = None
        self._ids: torch.Tensor | None = None
        self._tail: torch.Tensor | None = None  # (B, span - 1) the last tokens of the last call
        self._ended = 0  # the sequence length after the last call: a cached call continues it only from there
        self._handles = [
            model.get_input_embeddings().register_forward_pre_hook(self._read),
            arch.decoder_layers(model)[0].register_forward_pre_hook(self._see, with_kwargs=True),
        ]

    def _read(self, module: nn.Module, args: tuple) -> None:
        self._ids = args[0]

    def _see(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        h = args[0] if args else kwargs["hidden_states"]
        ids, self._ids = self._ids, None
        if ids is None or ids.shape != h.shape[:-1]:
            ids = torch.full(h.shape[:-1], NO_TOKEN, dtype=torch.int64, device=h.device)
        past, carried = continued_state(kwargs, 0, self._ended, self._tail, ids.shape[0])
        self.recent = recent_windows(ids, self.span, kwargs.get("position_ids"), carried)
        self._tail, self._ended = self.recent[:, -1, 1:], past + ids.shape[1]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self.recent = self._ids = self._tail = None
