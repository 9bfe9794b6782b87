"""The QF2 block's readout, refit in closed form when QFt has faded the stock MLP out.

Once alpha reaches 0 the converted layer L outputs ``down_proj(firing(up_proj(h)))`` and nothing
else: no residual, no stock MLP. At the training beta (1000) the firing is binary for all but a
sliver of units, so almost no gradient passes through it: from that step on, AdamW can only move
down_proj and the layers above, and the first steps after the fade start from a down_proj that
was shaped for a blend. Yet what down_proj should be is a linear least-squares problem. With the
firing pattern s_t (D_ff,) of each token and y_t (D_model,) what the *stock* layer L output for it
(r_t + FF_orig(h_t): what the layers above were trained to read),

    D = argmin_D  sum_t ||D s_t - y_t||^2 + lam ||D||_F^2
    D^T = (S^T S + lam I)^{-1} S^T Y            S (n, D_ff), Y (n, D_model), lam = ridge * mean(diag(S^T S))

solved once, in float64 (Cholesky), over the tokens of the first training rows. On the 0.5B model
(layer 20, 16k tokens of company_iqa) this alone reproduces the stock layer's output to 4.5%
(relative Frobenius error) before any further training; see docs/QF2.md.

Pure math (``Normal``, ``readout_solve``) apart from running the model (``mlp_input``, ``fit_readout``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from memory import architecture as arch
from memory.qf2 import firing

# Relative to the mean diagonal of S^T S. On the 0.5B (layer 20, 11k fitted tokens) the held-out
# error was 7.1% at 1e-3, 7.7% at 1e-1, 10% at 1 (docs/QF2.md); 1e-2 sits between the first two.
DEFAULT_RIDGE = 1e-2


@dataclass
class ReadoutFit:
    weight: torch.Tensor  # (D_model, D_ff) the new down_proj weight, float64
    relative_error: float  # ||S D^T - Y||_F / ||Y||_F on the fitted tokens
    tokens: int


class Normal:
    """The normal equations S^T S, S^T Y, Y^T Y accumulated over chunks of tokens (float64, on
    ``device``: where the model runs)."""

    def __init__(self, d_ff: int, d_model: int, device: torch.device | str = "cpu"):
        self.gram = torch.zeros(d_ff, d_ff, dtype=torch.float64, device=device)
        self.cross = torch.zeros(d_ff, d_model, dtype=torch.float64, device=device)
        self.target_sq = 0.0
        self.tokens = 0

    def add(self, codes: torch.Tensor, targets: torch.Tensor) -> None:
        """codes (n, D_ff) in [0, 1], targets (n, D_model): one chunk of tokens."""
        device = self.gram.device
        codes, targets = codes.detach().to(device, torch.float32), targets.detach().to(device, torch.float32)
        self.gram += (codes.T @ codes).double()  # entries are sums of products in [0, 1]: exact enough in float32
        self.cross += codes.double().T @ targets.double()
        self.target_sq += float(targets.double().pow(2).sum())
        self.tokens += codes.shape[0]


def readout_solve(normal: Normal, ridge: float = DEFAULT_RIDGE) -> ReadoutFit:
    """The ridge least-squares readout from accumulated normal equations."""
    if normal.tokens == 0:
        raise ValueError("no tokens to fit the readout on")
    if not ridge > 0:
        raise ValueError(f"ridge must be > 0, got {ridge}")
    gram = normal.gram.clone()
    gram.diagonal().add_(ridge * float(normal.gram.diagonal().mean()) + 1e-12)
    factor = torch.linalg.cholesky(gram)
    solution = torch.cholesky_solve(normal.cross, factor)  # (D_ff, D_model)
    # ||S X - Y||^2 = X^T G X - 2 X^T C + Y^T Y, with G, C unregularized
    residual_sq = float((solution * (normal.gram @ solution)).sum() - 2 * (solution * normal.cross).sum()) + normal.target_sq
    error = (max(residual_sq, 0.0) / normal.target_sq) ** 0.5 if normal.target_sq > 0 else 0.0
    if not bool(torch.isfinite(solution).all()):
        raise ValueError("the readout fit is not finite; raise the ridge")
    return ReadoutFit(weight=solution.T.contiguous(), relative_error=error, tokens=normal.tokens)


class _MLPInputSeen(Exception):
    pass


@torch.no_grad()
def mlp_input(model: nn.Module, hidden: torch.Tensor, layer_kwargs: list[dict], first: int, layer: int) -> torch.Tensor:
    """h, the MLP input of ``layer`` (S, D_model), running layers first..layer from the hidden state
    entering ``first`` (``layer_kwargs`` as the model called those layers); stops at the MLP."""
    parts = arch.architecture_of(model)
    layers = arch.decoder_layers(model)
    seen: list[torch.Tensor] = []

    def grab(module, args):
        seen.append(args[0])
        raise _MLPInputSeen

    handle = layers[layer].get_submodule(parts.mlp).register_forward_pre_hook(grab)
    try:
        h = hidden
        for module, kwargs in zip(layers[first:layer + 1], layer_kwargs):
            out = module(h.to(next(module.parameters()).dtype), **kwargs)
            h = out if isinstance(out, torch.Tensor) else out[0]
    except _MLPInputSeen:
        pass
    finally:
        handle.remove()
    return seen[0][0]


def fit_readout(model: nn.Module, examples, first: int, layer: int, beta: float,
                ridge: float = DEFAULT_RIDGE) -> ReadoutFit:
    """Refit ``layer``'s down_proj (not written: the caller writes ``fit.weight``) on cached
    examples that carry the stock layer's output (``CachedExample.stock_output``)."""
    parts = arch.architecture_of(model)
    up = arch.decoder_layers(model)[layer].get_submodule(f"{parts.mlp}.{parts.up_proj}")
    normal = None
    for example in examples:
        h = mlp_input(model, example.hidden, example.layer_kwargs, first, layer)
        with torch.no_grad():
            codes = firing(up(h.to(up.weight.dtype)).float(), beta)
        if normal is None:
            normal = Normal(codes.shape[-1], example.stock_output.shape[-1], codes.device)
        normal.add(codes, example.stock_output)
    if normal is None:
        raise ValueError("no examples to fit the readout on")
    return readout_solve(normal, ridge)
