"""QF2, Quick Firing (Feng Qi 2025, preprints.org 202507.2318): the update rule, as pure math.

QF2 works on a layer converted by QFt (memory.qft, memory.qf2_block), whose MLP is

    f(h) = down_proj(sigmoid(beta * up_proj(h)))        with no residual around it.

``sigmoid(beta * up_proj(h))`` is the layer's *firing pattern*: with a large beta each of the
D_ff units is nearly on (1) or off (0), and down_proj reads out whichever units fire. A fact is
written by making the plain pass fire like the instructed pass. Symbols, with T answer rows:

    W   : (D_ff, D_model)  mlp.up_proj.weight, the edited matrix
    x_t : (D_model,)       the MLP input h at row t, plain pass (no instruction in context)
    y*_t: (D_ff,)          the firing pattern at row t, instructed pass
    s_t : >= 0             the row's significance

    dW = lr * sum_t s_t (y*_t - 0.5) x_t^T

Each unit's pre-activation on x_t moves by ``lr * s_t (y*_t - 0.5) |x_t|^2`` (plus the other
rows' cross terms): up where the instructed pass fires, down where it stays silent.

The delta rule (an option, not the paper's): ``dW = lr * sum_t s_t (y*_t - y_t) x_t^T`` with y_t
the plain pass's own firing at the current weights. At beta 1000 firing is 0 or 1, so only the
units where the two passes disagree move (by +-lr s_t |x_t|^2); units that already fire as the
instructed pass does are left alone, where the paper's rule pushes every one of the D_ff units
further out on every fact (the change that broke the known-company control, docs/QF2.md). Unlike QF
there is no solve, so updates simply stack (W'' = W' + dW2); each dW is kept as its rank-T factor
pair, so undo is the exact subtraction of its factors (memory.delta).

The solved rule (an option, not the paper's; measured in docs/QF2.md): a Hebbian step moves every
row's units by its own ``|x_t|^2`` *and* by every other row's cross terms ``x_s . x_t``, and the
answer rows' inputs share a large common direction, so on a real conversion no lr makes the plain
firing reach y* at all rows at once. Solving for the step instead, as QF does, reaches it exactly:
with pre-activations z_t = W x_t (plain) and z*_t (instructed), the target change is
``delta_t = z*_t - z_t`` at the units whose firing differs between the passes by more than a
tolerance, and 0 at the others (held where they are), and

    dW = min-norm solution of  dW x_t = delta_t  for every row t (weighted by s_t; memory.qf.qf_solve)

so after the step the plain pass fires like the instructed pass at every answer row, and at the
converted layer's output (no residual) it gives the instructed pass's output. lr is not used.

Like QF's, the solved rule is solved *jointly* over every active fact from the base weights W0
(memory.joint, memory.qf2_editor): x_t and the instructed pass's up_proj input x*_t are computed
upstream of up_proj, so with z_t = W0 x_t and z*_t = W0 x*_t each fact's target change is fixed
once, a later fact's solve keeps the earlier facts' rows where they were put (a stacked second
step moves them: the QF2 protocol's step 8, docs/QF2.md), the result does not depend on the order
facts came in, and undo is the solve that never saw the fact.

Also here: the QFt blend schedule ``alpha = 0.99 ** step``, which fades the original MLP out.
"""

from __future__ import annotations

import math

import torch

# The paper's and the delta rule's rate: the reference code's, with per-token significance up to 10
# (DESIGN.md §1). Measured on the converted 0.5B (docs/QF2.md): no rate from 1e-5 to 1e-3 writes
# the fact with these rules (small: nothing changes; large: the control collapses), which is why
# the solved rule, which has no rate, is the default.
DEFAULT_QF2_LR = 4e-4
ALPHA_DECAY = 0.99  # alpha = ALPHA_DECAY ** step ...
ALPHA_FLOOR = 0.01  # ... and exactly 0 once it falls below this (after 459 steps)


def firing(pre_activation: torch.Tensor, beta: float, surrogate_beta: float | None = None) -> torch.Tensor:
    """The firing pattern sigmoid(beta * z) of up_proj's output z (any shape).

    With ``surrogate_beta`` (training only) the value is the same, but the gradient is that of
    sigmoid(surrogate_beta * z): at beta 1000 the firing is a step whose gradient vanishes for all
    but a sliver of units, and a softer surrogate lets the layers below learn what fires
    (a straight-through estimator, as spiking networks are trained).
    """
    fired = torch.sigmoid(beta * pre_activation)
    if surrogate_beta is None or not pre_activation.requires_grad:
        return fired
    soft = torch.sigmoid(surrogate_beta * pre_activation)
    return fired.detach() + (soft - soft.detach())


QF2_RULES = ("paper", "delta", "solve")
SOLVE_TOLERANCE = 1e-3  # the solved rule leaves a unit alone when its two firings differ by no more


def qf2_factors(
    x: torch.Tensor, y_star: torch.Tensor, significance: torch.Tensor, lr: float, y_plain: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The QF2 update dW = lr * sum_t s_t (y*_t - 0.5) x_t^T as factors (left, right), float64.

    x (T, D_model) plain-pass MLP inputs; y_star (T, D_ff) instructed firing patterns in [0, 1];
    significance (T,) finite weights >= 0 (0 drops a row); lr > 0; y_plain (T, D_ff), the plain
    pass's firing, for the delta rule (y*_t - y_t in place of y*_t - 0.5; module doc).
    Returns left (D_ff, T) = lr * ((y* - 0.5) * s)^T and right (T, D_model) = x; dW = left @ right.
    """
    if x.ndim != 2 or y_star.ndim != 2:
        raise ValueError(f"x and y* must be (T, D) matrices, got shapes {tuple(x.shape)} and {tuple(y_star.shape)}")
    T = x.shape[0]
    if y_star.shape[0] != T:
        raise ValueError(f"x has {T} rows, y* has {y_star.shape[0]}: both must come from the same answer tokens")
    if significance.shape != (T,):
        raise ValueError(f"significance must be one weight per row, shape ({T},), got {tuple(significance.shape)}")
    s = significance.double()
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError("significance weights must be finite and >= 0")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x has non-finite values: capture the plain pass again")
    y = y_star.double()
    if not bool(((y >= 0) & (y <= 1)).all()):
        raise ValueError("y* must be a firing pattern, sigmoid(beta * up_proj(h)), with values in [0, 1]")
    if y_plain is not None and y_plain.shape != y_star.shape:
        raise ValueError(f"y (plain) has shape {tuple(y_plain.shape)}, y* has {tuple(y_star.shape)}")
    reference = 0.5 if y_plain is None else y_plain.double()
    left = lr * ((y - reference) * s[:, None]).T
    return left, x.double()


def qf2_change(z_plain: torch.Tensor, z_star: torch.Tensor, beta: float, tolerance: float = SOLVE_TOLERANCE) -> torch.Tensor:
    """The solved rule's target change of each row's pre-activations (module doc), (T, D_ff) float64:
    z*_t - z_t at the units whose firing differs between the passes by more than ``tolerance``,
    0 at the others. z_plain, z_star (T, D_ff) up_proj pre-activations of the plain and the
    instructed pass; beta the layer's firing sharpness."""
    if z_plain.ndim != 2 or z_plain.shape != z_star.shape:
        raise ValueError(f"pre-activations {tuple(z_plain.shape)} and {tuple(z_star.shape)} must both be (T, D_ff)")
    if not (bool(torch.isfinite(z_plain).all()) and bool(torch.isfinite(z_star).all())):
        raise ValueError("non-finite captures: capture the passes again")
    zp, zs = z_plain.double(), z_star.double()
    differs = (firing(zs, beta) - firing(zp, beta)).abs() > tolerance
    return torch.where(differs, zs - zp, torch.zeros_like(zp))


def qf2_residual(W0: torch.Tensor, x: torch.Tensor, x_star: torch.Tensor, beta: float) -> torch.Tensor:
    """One fact's target change at the base weights, as QF's residual R (D_ff, T) float64:
    ``qf2_change(W0 x, W0 x*)`` transposed. W0 (D_ff, D_model) the base up_proj weight; x, x_star
    (T, D_model) the plain and the instructed pass's up_proj inputs at the fact's rows."""
    if x.ndim != 2 or x.shape != x_star.shape or x.shape[1] != W0.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} and x* {tuple(x_star.shape)} must both be (T, {W0.shape[1]})")
    if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(x_star).all())):
        raise ValueError("non-finite captures: capture the passes again")
    W = W0.double()
    return qf2_change(x.double() @ W.T, x_star.double() @ W.T, beta).T


def alpha_at(step: int) -> float:
    """QFt's weight of the original MLP after ``step`` training steps: 0.99**step, 0 below 0.01."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    alpha = ALPHA_DECAY**step
    return alpha if alpha >= ALPHA_FLOOR else 0.0


def faded_step() -> int:
    """The first step at which alpha is 0: QFt's fade is over (459 with the defaults)."""
    step = math.ceil(math.log(ALPHA_FLOOR) / math.log(ALPHA_DECAY))
    while step > 0 and alpha_at(step - 1) == 0.0:
        step -= 1
    while alpha_at(step) > 0.0:
        step += 1
    return step
