"""Spreading a fact over several consecutive layers (issue 7, item 4; MEMIT's residual split).

One matrix has D key dimensions (4,864 on the 0.5B, 8,960 on the 1.5B); as facts accumulate at
the last layer their rows crowd that space, the row system grows ill-conditioned and the update
grows with it (docs/RESULTS.md, "1,000 CounterFact edits"). Spreading writes each fact with the
down_proj matrices of the k layers ``L-k+1 .. L`` together, L the edited (top) layer.

The constraint stays QF's at the top layer: the plain pass's residual leaving layer L must change
by R = -(W_L (U'_L - U_L) - (V_L - V'_L)), the instructed pass's difference there (memory.qf).
A change written by down_proj at layer l < L enters the residual stream at the same position and,
to first order, reaches layer L's output unchanged, so the k matrices together must meet

    sum_l dW_l U'_l = R                      U'_l (D, T): the plain keys at layer l

and we take the minimum of ``sum_l ||dW_l||_F^2`` (or of each layer's preserving metric,
memory.preserve, with Z_l = M_l^{-1} U'_l). Stacking the matrices side by side makes it one QF
solve over keys of k*D dimensions, whose solution shares one left factor:

    G = sum_l U'_l^T Z_l,     left = R S (S G S + lam I)^{-1} S,     dW_l = left Z_l^T

So the split is not chosen by hand: each layer writes ``left G_l`` (G_l = U'_l^T Z_l), its share
of R in proportion to how much its keys say about the rows, and the shares sum to R exactly
(lam -> 0; tests/test_spread.py). The Gram is a sum of k positive semi-definite matrices, so its
small eigenvalues (the directions the rows barely span at one layer) grow, and with them the
update shrinks.

The first-order step is the approximation: layers l+1 .. L read the change (their attention and
MLP react to it), so the top-layer residual is met exactly only for k = 1. Every fact's rows are
captured at the base weights of the lower layers (QFEditor puts W0 back into them for the two
passes): in a live forward pass an edit at layer l would change the keys of the layers above it,
and the rows would depend on the facts learned before. So a fact's rows are fixed once captured,
the joint solve from W0 is order-independent, and undo (drop the rows, re-solve) stays exact, as
for one layer; the solve ignores how the layers' edits interact, as MEMIT's batch solve does.
Efficacy is what the benchmark measures (docs/RESULTS.md, "Spreading over layers").
"""

from __future__ import annotations

from dataclasses import dataclass


def spread_layers(top: int, spread: int) -> tuple[int, ...]:
    """The layers a fact spread over ``spread`` layers up to ``top`` is written at, lowest first."""
    if spread < 1:
        raise ValueError("spread must be >= 1 (1: the edited layer alone)")
    if spread > top + 1:
        raise ValueError(f"cannot spread over {spread} layers below layer {top}: there are {top + 1}")
    return tuple(range(top - spread + 1, top + 1))


@dataclass(frozen=True)
class LowerLayer:
    """A layer below the top one that a spread solve also writes: its down_proj and base weights' hash."""

    layer: int
    parameter: str
    base_sha256: str
