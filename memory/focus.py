"""Focus: write only the part of a row's change that moves the logits the fact is about (issue 7).

QF's constraint copies the instructed pass's whole change of the residual (R, memory.qf). At the
last layer much of it has nothing to do with the answer: the instruction is a different prompt,
and every direction of the residual moves a little. Only the logits matter there: with
``x = final_norm(h)``, a change ``d`` of h moves logit j by ``(g * w_j) . d / rms(h)`` to first
order (g the norm's gain, w_j row j of the LM head). So for row t we keep the projection of
r_t on the span of ``g * w_j`` for the target token and the plain pass's top-k tokens: the
first-order change of those logits is exactly the instructed pass's, the rest of R (and of dW)
is dropped. ``dW`` is then much smaller, and so is what it does to other inputs.

Pure functions; the bases are computed at capture time, stored with the fact's rows (so the
joint solve, undo and rebuild stay exact) and applied in memory.joint.
"""

from __future__ import annotations

import torch


def focus_bases(lm_head: torch.Tensor, norm_gain: torch.Tensor, targets: tuple[int, ...],
                top_tokens: torch.Tensor) -> torch.Tensor:
    """Orthonormal bases (T, N, k + 1) of span{g * w_j : j = target_t or one of row t's top k tokens}.

    lm_head (V, N); norm_gain (N,); top_tokens (T, k + 1) token ids, best first: the first k
    that are not the target are used, so every row has k + 1 distinct directions."""
    k = top_tokens.shape[1] - 1
    bases = []
    g = norm_gain.detach().double().cpu()
    W = lm_head.detach()
    for t, target in enumerate(targets):
        others = [j for j in top_tokens[t].tolist() if j != target][:k]
        E = W[[target] + others].double().cpu() * g  # (k + 1, N)
        Q, _ = torch.linalg.qr(E.T)  # (N, m): orthonormal columns spanning E's rows
        bases.append(Q)
    return torch.stack(bases)


def focused(R: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """Each column r_t of R (N, T) projected on span(bases[t]) (bases (T, N, m))."""
    B = bases.to(R.dtype)
    coeffs = torch.einsum("tnm,nt->tm", B, R)
    return torch.einsum("tnm,tm->nt", B, coeffs)
