"""Row gains: how far past the instructed pass to write each row, read off the LM head (issue 7).

A fixed gain (memory.qf, "Gain") scales every row's residual alike. Measured on the default model
(docs/RESULTS.md, key-gated neurons), gain 2 lifts zsRE's efficacy and paraphrases but overshoots
some rows (their top-1 token is then another one, farther along the instructed pass's direction),
and it cuts sentence answers short; gain 1 leaves partly reached questions (a paraphrase firing a
gated neuron at 0.6, a share of a linear change) short of the answer.

At the last layer the edited MLP's output is added to the residual stream that the final norm and
the LM head read, so what a row's plain pass predicts after its change is known without a forward
pass: ``logits(g) = head(norm(h + g r))``, h the plain pass's residual stream after the layer and r
the row's residual. A row's gain is the smallest on a grid from 1 to ``max_gain`` at which the row's
answer token is the top-1 token both when the change is written whole and when only ``HOLD`` of it
arrives (a paraphrase's share); failing that, the smallest at which it is top-1 when whole; failing
that (the instructed pass itself does not name it), the one that makes it likeliest.

Pure functions of the captures, the base weights and the head. The editor decides a fact's gains
once and the ledger records them with its captures (FactRows.gains), so a rebuild, an undo or a
load reads no head; a replay onto another checkpoint decides them there, from its own head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STEP = 0.25  # the grid of gains: 1, 1.25, ..., max_gain
HOLD = 0.5  # the share of a row's change at which its answer token should still come first


@dataclass(frozen=True)
class Head:
    """What turns the last layer's residual stream into logits: the final RMSNorm and the LM head."""

    weight: torch.Tensor  # (V, N) the LM head, in the model's dtype
    norm_weight: torch.Tensor  # (N,)
    eps: float

    def read(self, h: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """W(g h_t) and W(g r_t) for every row, (T, V) float32 each, in one pass over the head (in its dtype).
        RMSNorm scales a vector by one number, so the logits of h_t + c r_t are
        ``scale(h_t, r_t, c) (W(g h_t) + c W(g r_t))``."""
        g = self.norm_weight.detach().double().cpu()
        rows = torch.cat([h.double() * g, R.T.double() * g]).to(self.weight.device, self.weight.dtype)
        a, b = (rows @ self.weight.detach().T).float().cpu().split(h.shape[0])
        return a, b

    def logits_at(self, h: torch.Tensor, R: torch.Tensor, gains: torch.Tensor,
                  read: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The logits (T, V) float64 of h_t + c_t r_t for each row's gain c_t, from ``read`` = the
        head's ``read(h, R)`` (no further pass over the head)."""
        a, b = read
        c = gains.double()[:, None]
        x = h.double() + c * R.T.double()
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return torch.addcmul(a.double(), c, b.double()).mul_(scale)

    def scale(self, h: torch.Tensor, r: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """RMSNorm's factor for h + c r at each scale c, (C,) float32, from one row's h, r (N,)."""
        c = scales.double()
        return torch.rsqrt((h.double() + c[:, None] * r.double()).pow(2).mean(-1) + self.eps).float()


def gain_grid(max_gain: float) -> torch.Tensor:
    """1, 1 + STEP, ..., up to max_gain (at least 1) -> (G,) float64."""
    if max_gain < 1:
        raise ValueError(f"the row gains' maximum must be >= 1 (the instructed pass's own change), not {max_gain}")
    return torch.arange(1.0, max_gain + 1e-9, STEP, dtype=torch.float64)


def row_gains(h: torch.Tensor, R: torch.Tensor, targets: tuple[int, ...], head: Head, max_gain: float,
              read: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Each row's gain (T,) float64 for rows whose plain-pass residual stream after the edited (last)
    layer is h (T, N), whose residual to write is R (N, T), predicting ``targets`` (-1: an anchor,
    which has no residual: gain 1). See the module docstring for the rule. ``read``: the head's
    ``read(h, R)`` when already made."""
    grid = gain_grid(max_gain)
    G, scales = len(grid), torch.cat([grid, HOLD * grid])  # the whole change, then HOLD of it
    a, b = head.read(h, R) if read is None else read
    gains = torch.ones(len(targets), dtype=torch.float64)
    unscaled = torch.empty(2 * G, a.shape[1])  # one buffer for every row (allocating it anew costs more than filling it)
    for t, target in enumerate(targets):
        if target < 0:
            continue
        # the logits up to RMSNorm's positive factor, which no argmax depends on
        torch.addcmul(a[t][None], scales.float()[:, None], b[t][None], out=unscaled)  # (2G, V)
        first = (unscaled.argmax(-1) == target).view(2, G)
        held = first.all(0)
        if held.any():
            gains[t] = grid[held.nonzero()[0, 0]]
        elif first[0].any():
            gains[t] = grid[first[0].nonzero()[0, 0]]
        else:  # the factor matters to the probabilities
            logits = head.scale(h[t], R[:, t], grid)[:, None] * unscaled[:G]
            gains[t] = grid[logits.log_softmax(-1)[:, target].argmax()]
    return gains
