"""Soft anchors: a fact's anchors as a term of the preserving metric instead of held rows (issue 7).

Anchors (memory.anchors) are the fact's query asked of other subjects. As rows they hold
``dW a = 0`` exactly, one rank each: three anchors beside a fact's one or two target rows fill the
0.5B's 4,864 key dimensions by about 1,000 facts, the row system turns ill-conditioned and the
update explodes (docs/RESULTS.md, "Anchor rows"). Soft, they cost the solve a penalty instead:

    minimize ||dW||_M^2 + sum_j beta_j ||dW a_j||^2    subject to    dW U' = R

which is QF's solve in the metric ``M' = M + Â Â^T``, Â's columns ``a_j sqrt(beta_j)``. We take
``beta_j = b / (a_j^T M^{-1} a_j)``: ``b`` is the anchor's penalty in units of what the metric
already charges for writing along it (b -> infinity: the hard anchor; b = 0: none). The rows are
met exactly as before; the anchors take no row, so they never use up the key space: many facts'
anchors of one relation pile up along the directions that relation shares, and the penalty there
grows, which is what should hold the relation's other subjects.

M' is never formed. With ``Y = M^{-1} Â``, ``S = I + Â^T Y`` (A x A) and ``X = U'^T Y`` (T x A),
Woodbury gives what the solve needs (memory.qf, memory.joint):

    Gram:          U'^T M'^{-1} U'   = U'^T M^{-1} U' - X S^{-1} X^T
    right factor:  (M'^{-1} U')^T    = Z^T - X S^{-1} Y^T              Z = M^{-1} U'

The blocks of S and X are grown and shrunk fact by fact in memory.joint, so adding or removing a
fact stays incremental, the solve stays independent of the order facts came in, and undo stays
exact. Pure functions here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def scaled_anchors(keys: torch.Tensor, weight: float, inverse_metric: Callable[[torch.Tensor], torch.Tensor] | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Â and Y = M^{-1} Â, both as rows (A, D) float64, for anchor keys ``keys`` (A, D) of penalty
    ``weight`` b > 0; ``inverse_metric`` maps rows X to (M^{-1} X^T)^T (None: the identity)."""
    if not weight > 0:
        raise ValueError(f"the soft anchors' weight must be > 0, not {weight}")
    A = keys.detach().to("cpu", torch.float64)
    Y = A.clone() if inverse_metric is None else inverse_metric(A).to("cpu", torch.float64)
    cost = (A * Y).sum(1)  # a_j^T M^{-1} a_j
    if not bool((cost > 0).all()):
        raise ValueError("an anchor key is zero; it cannot be weighted")
    scale = (weight / cost).sqrt()[:, None]
    return A * scale, Y * scale


def woodbury_solve_parts(gram: torch.Tensor, right: torch.Tensor, X: torch.Tensor, S: torch.Tensor, Y: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gram matrix (T, T) and right factor (T, D) in the metric M + Â Â^T, from those in M
    (``gram`` = U'^T M^{-1} U', ``right`` = (M^{-1} U')^T) and the anchors' X = U'^T Y (T, A),
    S = I + Â^T Y (A, A), Y (A, D). Unchanged with no anchors."""
    if S.shape[0] == 0:
        return gram, right
    W = torch.cholesky_solve(X.T, torch.linalg.cholesky(S))  # S^{-1} X^T (A, T)
    return gram - X @ W, right - W.T @ Y
