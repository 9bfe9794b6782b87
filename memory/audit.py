"""Which facts changed which weights: norms and overlaps of low-rank deltas, from their factors.

All from the factors (dW = L R, L (N, r), R (r, D)); nothing dense is formed:
row i of dW has squared norm  L_i (R R^T) L_i^T,  column j  R_j^T (L^T L) R_j,
and <dW1, dW2>_F = sum((L1^T L2) * (R1 R2^T)).
"""

from __future__ import annotations

import torch

from memory.delta import LowRankDelta


def _factors(delta: LowRankDelta) -> tuple[torch.Tensor, torch.Tensor]:
    return delta.left.double(), delta.right.double()


def row_norms(delta: LowRankDelta) -> torch.Tensor:
    """(N,) Euclidean norm of each output row of dW."""
    L, R = _factors(delta)
    return torch.sqrt(torch.clamp(((L @ (R @ R.T)) * L).sum(1), min=0))


def col_norms(delta: LowRankDelta) -> torch.Tensor:
    """(D,) Euclidean norm of each input column of dW."""
    L, R = _factors(delta)
    return torch.sqrt(torch.clamp(((L.T @ L @ R) * R).sum(0), min=0))


def top_k(values: torch.Tensor, k: int) -> list[tuple[int, float]]:
    k = min(k, values.numel())
    top = torch.topk(values, k)
    return [(int(i), float(v)) for v, i in zip(top.values, top.indices)]


def inner(a: LowRankDelta, b: LowRankDelta) -> float:
    """Frobenius inner product <dW_a, dW_b>."""
    La, Ra = _factors(a)
    Lb, Rb = _factors(b)
    return float(((La.T @ Lb) * (Ra @ Rb.T)).sum())


def cosine(a: LowRankDelta, b: LowRankDelta) -> float:
    """Cosine between two deltas on the same parameter (0 when either is zero)."""
    if a.parameter != b.parameter:
        return 0.0
    denom = a.norm() * b.norm()
    return inner(a, b) / denom if denom > 0 else 0.0
