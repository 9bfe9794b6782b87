"""QF, Quick Feedforward (Feng Qi 2025, arXiv 2507.04300): the closed-form, minimum-norm edit.

Symbols follow the paper, with T constrained rows stacked as columns:

    W  : (N, D)   mlp.down_proj.weight, the edited matrix (base weights W0)
    U  : (D, T)   inputs of down_proj, instructed pass        U' : plain pass
    V  : (N, T)   residual r entering the MLP, instructed     V' : plain pass

Constraint ``W' U' = W U + V - V'`` (the plain pass's residual after the MLP equals the
instructed pass's), minimum ``||W' - W||_F``.  With the residual of the constraint

    R = -(W (U' - U) - (V - V'))                                        (N, T)

the solution is ``dW = R (U'^T U')^{-1} U'^T``.

Significance. Each row t has a weight s_t >= 0.  We solve the weighted ridge problem

    min_dW  sum_t s_t^2 ||dW u'_t - r_t||^2 + lam ||dW||_F^2
    =>  dW = R S (S G S + lam I)^{-1} S U'^T,      G = U'^T U',  S = diag(s)

so s_t = 0 drops row t entirely (it is unconstrained), and with lam -> 0 every row with
s_t > 0 is met exactly, whatever its weight (the exact solution does not depend on
positive weights).  Weights only matter where rows compete: when T exceeds the rank of U'
(capacity, duplicated rows) the larger s_t is fitted more tightly.  We chose this over
scaling the target (s_t * r_t) because a half-weighted row would then be *learned by half*,
which has no meaning for a fact.

Ridge. ``lam = ridge * trace(S G S) / T``: relative to the mean squared row norm, so it does not
depend on the activations' scale.  The default 1e-8 is far below the rows' own scale, so
independent rows are met to better than 1e-6 relative (tested), while duplicated or nearly collinear
rows (the same fact twice) stay finite instead of exploding.  Everything is float64; the
system is solved by Cholesky, never an explicit inverse.

Ridge from the rows' conditioning (issue 7). As facts accumulate, their rows crowd the key space
(at the last layer the answer positions of different questions have similar keys) and the row
system ``S G S`` becomes ill-conditioned: its smallest eigenvalues lam_min let the solve amplify
tiny differences between rows by 1 / lam_min, part of why ||dW|| grows with the number of facts
(measured in docs/RESULTS.md: the cap shrinks ||dW|| and buys some specificity for some efficacy).
With a condition cap kappa the ridge is raised to

    lam = max(ridge * trace(S G S) / T,  lam_max(S G S) / kappa)

so the regularized system's condition number stays below kappa + 1 at any scale (lam_max by
power iteration, a few T x T products). Rows that are well separated are still met almost
exactly; only the directions the rows barely span (eigenvalues below lam_max / kappa) are damped.
kappa = 0 turns the cap off (the paper's rule).

Preserving what the model knows (issue 7). The identity norm ``||dW||_F`` treats every
direction of the key space alike, though the matrix mostly sees a few. Given the covariance
``C = K0 K0^T / n`` of the keys K0 it sees on generic text (memory.preserve), we minimize instead

    ||dW||_F^2 + p ||dW K0||_F^2 / (n c)   =  tr(dW M dW^T),    M = I + p C / c,   c = tr(C) / D

(c makes p dimensionless; p = 0 is the paper's rule). The solution has the same shape with the
keys replaced by ``Z = M^{-1} U'`` (D, T):

    dW = R S (S G S + lam I)^{-1} S Z^T,      G = U'^T M^{-1} U' = U'^T Z

so the rows are met exactly as before, the update is still rank T, and the joint solve, undo and
order independence carry over unchanged (Z, like U', is computed upstream of W). As p grows the
update is pushed into the directions K0 does not use (AlphaEdit's null space, softly).

Gain (issue 7). The constraint copies the instructed pass, so the edited plain pass predicts the
answer exactly as well as the model does with the fact in context, no better. With a gain g the
constraint is ``dW U' = g R``: g > 1 carries the plain pass past the instructed one, further
along the direction the instruction moved it. g = 1 is the paper's rule.

Because U, V, U', V' are computed *upstream* of W, editing W does not change them: all facts
are solved jointly from W0 over their stacked rows, order-independently, and undo is exact
(drop the fact's rows, re-solve).  The joint delta is kept as factors
``left = R S (S G S + lam I)^{-1} S`` (N, T) and ``right = Z^T`` (T, D; ``U'^T`` when p = 0), so one fact's share is
``left[:, rows_f] @ right[rows_f]`` and the shares sum to dW.
"""

from __future__ import annotations

import torch

DEFAULT_RIDGE = 1e-8


def qf_residual(W: torch.Tensor, U: torch.Tensor, V: torch.Tensor, U_plain: torch.Tensor, V_plain: torch.Tensor) -> torch.Tensor:
    """R = -(W (U' - U) - (V - V'))  -> (N, T), float64.

    W (N, D); U, U_plain (D, T); V, V_plain (N, T).
    """
    W64 = W.double()
    return (V.double() - V_plain.double()) - W64 @ (U_plain.double() - U.double())


def qf_gram(U_plain: torch.Tensor, Z: torch.Tensor | None = None) -> torch.Tensor:
    """G = U'^T Z  -> (T, T), float64; Z = M^{-1} U' (D, T), U' itself for the identity metric."""
    U64 = U_plain.double()
    return U64.T @ (U64 if Z is None else Z.double())


def top_eigenvalue(A: torch.Tensor, iterations: int = 30) -> float:
    """The largest eigenvalue of a symmetric positive semi-definite A (T, T), by power iteration.

    Starts from the all-ones vector (the rows' common direction, near the top one for keys that
    share a mean); a slight underestimate at worst, which only lowers the ridge it sets."""
    v = torch.ones(A.shape[0], dtype=A.dtype, device=A.device)
    value = 0.0
    for _ in range(iterations):
        w = A @ v
        norm = float(torch.linalg.vector_norm(w))
        if norm == 0.0:
            return 0.0
        value = float(v @ w) / float(v @ v)
        v = w / norm
    return value


def row_ridge(Gs: torch.Tensor, ridge: float, max_condition: float = 0.0) -> float:
    """The ridge added to the row system ``S G S`` (module doc, "Ridge" and its conditioning)."""
    lam = ridge * float(Gs.diagonal().mean())
    if max_condition > 0:
        lam = max(lam, top_eigenvalue(Gs) / max_condition)
    return lam


def qf_solve(
    R: torch.Tensor,
    U_plain: torch.Tensor,
    significance: torch.Tensor | None = None,
    ridge: float = DEFAULT_RIDGE,
    gram: torch.Tensor | None = None,
    Z: torch.Tensor | None = None,
    max_condition: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-norm dW with dW U' = R (weighted ridge, see module doc) as (left, right).

    R (N, T); U_plain (D, T); significance (T,) >= 0; Z = M^{-1} U' (D, T) for a preserving
    metric (None: the identity, the paper's rule); gram: a precomputed U'^T Z (T, T);
    max_condition: the condition cap kappa of the row system (0: none).
    Returns left (N, T) float64 and right = Z^T (T, D) (U'^T, in U_plain's dtype, without Z);
    dW = left @ right. Rows with significance 0 get a zero column in ``left``.
    """
    T = U_plain.shape[1]
    if R.shape[1] != T:
        raise ValueError(f"R has {R.shape[1]} rows, U' has {T}")
    if ridge < 0:
        raise ValueError("ridge must be >= 0")
    if max_condition < 0:
        raise ValueError("the condition cap must be >= 0 (0: none)")
    s = torch.ones(T, dtype=torch.float64) if significance is None else significance.double().to(R.device)
    if s.shape != (T,) or bool((s < 0).any()):
        raise ValueError("significance must be T non-negative weights")
    G = qf_gram(U_plain, Z) if gram is None else gram.double()
    keep = s > 0
    left = torch.zeros(R.shape[0], T, dtype=torch.float64, device=R.device)
    if bool(keep.any()):
        sk = s[keep]
        Gs = sk[:, None] * G[keep][:, keep] * sk[None, :]
        Gs.diagonal().add_(row_ridge(Gs, ridge, max_condition))
        # left_k = R_k S (S G S + lam I)^{-1} S ; solve the transposed SPD system.
        L = torch.linalg.cholesky(Gs)
        rhs = (R.double()[:, keep] * sk[None, :]).T  # (t, N)
        left[:, keep] = torch.cholesky_solve(rhs, L).T * sk[None, :]
    return left, (U_plain if Z is None else Z).T


def qf_delta(W, U, V, U_plain, V_plain, significance=None, ridge: float = DEFAULT_RIDGE) -> torch.Tensor:
    """The dense dW (N, D), float64: for tests and small cases; production keeps the factors."""
    left, right = qf_solve(qf_residual(W, U, V, U_plain, V_plain), U_plain, significance, ridge)
    return left @ right.double()
