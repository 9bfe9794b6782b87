"""Steering: where the instructed pass does not name a row's answer, the least change that does (issue 7).

QF writes at each row the change the instructed pass makes (memory.qf), scaled by the row's gain
(memory.row_gain). Where the instruction in context does not make the model say the answer (on
CounterFact's 1.5B runs, 8% of the facts: "Michel Denisot spoke the language Russian. Michel
Denisot spoke the language" is still answered "French"), no gain helps: the change points
elsewhere, and the fact's own question keeps its old answer.

At the last layer the head reads the residual stream directly (memory.row_gain.Head), so what a
row predicts after a further change e is known without a forward pass: ``z(x) = rms(x)^-1 W (g *
x)`` at ``x = h + r + e``. With RMSNorm's factor held at its current value, ``z_target - z_j`` is
linear in e with gradient ``u_j = rms^-1 g * (w_target - w_j)``, so the least-norm e that puts the
target ``margin`` above the tokens that beat it is one small least-squares system over those tokens
(``e = U^T (U U^T)^-1 d``). The tokens that beat it change once e is added and the factor moves a
little, so this is repeated from the new point until the target leads by the margin (at most
``MAX_STEPS`` reads of the head).

Pure functions of the rows' captures and the head; the editor decides a fact's steering once, with
its gains, and the ledger records it (FactRows.steer), so a rebuild, an undo or a load reads no head.
"""

from __future__ import annotations

import torch

from memory.row_gain import Head

MAX_STEPS = 8  # reads of the head per row, at most
COMPETITORS = 8  # tokens held below the target per step: those that lead it most


@torch.no_grad()
def steering(h: torch.Tensor, R: torch.Tensor, targets: tuple[int, ...], head: Head, margin: float,
             start_logits: torch.Tensor | None = None) -> torch.Tensor:
    """The change e (N, T) float64 to add to each row's residual R (N, T) so that the row's answer
    token leads every other by ``margin`` (nats) after the layer: zero for rows whose answer already
    leads by it and for anchors (target -1). h (T, N): the plain pass's residual stream after the
    (last) layer. See the module docstring. Each step reads the head once for every row not yet
    steered (one pass over its weights, not one per row); ``start_logits`` (T, V), the logits at
    h + R when already known (from the row gains' read, Head.logits_at), stand in for the first."""
    if margin <= 0:
        raise ValueError(f"the steering margin must be > 0 (nats by which the answer leads), not {margin}")
    E = torch.zeros_like(R, dtype=torch.float64)
    rows = [t for t, target in enumerate(targets) if target >= 0]  # anchors have no answer to steer to
    if not rows:
        return E
    g = head.norm_weight.detach().double().cpu()
    x = h[rows].double() + R[:, rows].T.double()  # (k, N) each row's point before steering
    e = torch.zeros_like(x)
    active = list(range(len(rows)))  # rows whose answer does not lead by the margin yet
    for step in range(MAX_STEPS):
        if not active:
            break
        point = x[active] + e[active]
        scales = torch.rsqrt(point.pow(2).mean(-1) + head.eps)  # RMSNorm's factor, held for this step
        if step == 0 and start_logits is not None:
            deficit = start_logits[rows].double()
        else:
            deficit = _logits(head, point * g * scales[:, None])  # (a, V)
        wanted = torch.tensor([targets[rows[row]] for row in active])[:, None]
        # > 0: token j leads the target or is within the margin (in place: these are large)
        deficit.sub_(deficit.gather(1, wanted)).add_(margin).scatter_(1, wanted, float("-inf"))
        worst = deficit.topk(COMPETITORS, dim=1)
        still = []
        for i, row in enumerate(active):
            held = worst.indices[i][worst.values[i] > 0]
            if not len(held):
                continue
            target = int(wanted[i])
            U = (head.weight[[target]].double().cpu() - head.weight[held].double().cpu()) * g * float(scales[i])  # (k, N)
            d = worst.values[i][worst.values[i] > 0]
            e[row] += U.T @ torch.linalg.lstsq(U @ U.T, d[:, None]).solution[:, 0]
            still.append(row)
        active = still
    E[:, rows] = e.T
    return E


def _logits(head: Head, x: torch.Tensor) -> torch.Tensor:
    """The head's logits (A, V) float64 of normalized, gained residuals x (A, N), in the head's dtype."""
    return (x.to(head.weight.device, head.weight.dtype) @ head.weight.detach().T).double().cpu()
