"""The QF2 block: one decoder layer of a stock transformers model, converted for QF2 (DESIGN.md §1).

At the converted layer L, with r the residual stream entering the MLP and h = norm(r),

    out = alpha * r + alpha * FF_orig(h) + (1 - alpha) * FF_qf2(h)
    FF_orig(h) = down_proj(act(gate_proj(h)) * up_proj(h))        the stock MLP
    FF_qf2(h)  = down_proj(firing(up_proj(h), beta))              firing = sigmoid(beta * .)

alpha = 1 is the stock layer (bit for bit); alpha = 0 is the converted layer, whose output is
FF_qf2(h) with no residual around the MLP. QFt (memory.qft) lowers alpha while training.

Installed by module replacement and hooks, never by patched library code:

- ``layer.mlp`` is replaced by a ``QF2Block``, which computes ``blend = alpha * FF_orig(h) +
  (1 - alpha) * FF_qf2(h)``;
- a forward pre-hook on ``post_attention_layernorm`` records r, its input;
- a forward hook on the decoder layer replaces the layer's output ``r + blend`` by
  ``alpha * r + blend``.

Why rewrite the layer's output instead of letting the MLP return ``blend - (1 - alpha) r`` (one
hook fewer): the residual stream is often far larger than the MLP's output, and in bf16
``r + (blend - r)`` loses the blend's low bits (an error of about |r| / 256). The rewrite is exact.

Shared, not copied, weights: the QF2 path uses the layer's own up_proj and down_proj, as the
reference does. The block registers the stock MLP's gate/up/down modules under their own names,
so parameter names and ``state_dict`` keys do not change: a converted checkpoint is a stock
checkpoint that ``from_pretrained`` loads with the stock class, plus ``config.qf2``; QF2 edits
``model.layers.L.mlp.up_proj.weight``, the path it had before conversion; and ``uninstall`` gives
back the very same MLP object. gate_proj only matters while alpha > 0.

beta and alpha live in ``model.config.qf2 = {"layer", "beta", "alpha"}`` (saved by
``save_pretrained``) and are read at every forward: the config is their one source of truth.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from memory import architecture as arch
from memory.qf2 import firing

CONFIG_KEY = "qf2"  # model.config.qf2


class QF2Block(nn.Module):
    """Replaces the MLP of one decoder layer; owns the two hooks that remove its residual."""

    def __init__(self, model: nn.Module, layer: int):
        super().__init__()
        self.layer = layer
        self.parts = arch.architecture_of(model)
        decoder_layer = arch.decoder_layers(model)[layer]
        original = decoder_layer.get_submodule(self.parts.mlp)
        for name in (self.parts.gate_proj, self.parts.up_proj, self.parts.down_proj):
            self.add_module(name, original.get_submodule(name))  # shared: same modules, same keys
        # The stock MLP as a plain attribute, not a submodule: registering it would duplicate keys.
        object.__setattr__(self, "original", original)
        self.config = model.config
        self.surrogate_beta: float | None = None  # QFt training only: the firing's gradient (memory.qf2.firing)
        self._residual: torch.Tensor | None = None  # r of the forward in progress
        self._blend: torch.Tensor | None = None
        norm = decoder_layer.get_submodule(self.parts.mlp_norm)
        self._hooks = [
            norm.register_forward_pre_hook(self._record_residual),
            decoder_layer.register_forward_hook(self._remove_residual),
        ]

    @property
    def beta(self) -> float:
        return self.config.qf2["beta"]

    @property
    def alpha(self) -> float:
        return self.config.qf2["alpha"]

    @alpha.setter
    def alpha(self, value: float) -> None:
        self.config.qf2["alpha"] = _checked_alpha(value)

    def qf2_path(self, h: torch.Tensor) -> torch.Tensor:
        """FF_qf2(h) = down_proj(sigmoid(beta * up_proj(h)))."""
        up = self.get_submodule(self.parts.up_proj)
        down = self.get_submodule(self.parts.down_proj)
        return down(firing(up(h), self.beta, self.surrogate_beta))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha
        if alpha == 1.0:
            return self.original(h)
        qf2 = self.qf2_path(h)
        self._blend = qf2 if alpha == 0.0 else alpha * self.original(h) + (1.0 - alpha) * qf2
        return self._blend

    def _record_residual(self, norm: nn.Module, args: tuple) -> None:
        self._residual = args[0]

    def _remove_residual(self, layer: nn.Module, args: tuple, output):
        """The layer computed r + blend; return alpha * r + blend instead (exactly)."""
        residual, blend = self._residual, self._blend
        self._residual = self._blend = None
        if self.alpha == 1.0:
            return None  # the stock layer: keep its output untouched
        out = blend if self.alpha == 0.0 else self.alpha * residual + blend
        return out if isinstance(output, torch.Tensor) else (out, *output[1:])

    def extra_repr(self) -> str:
        return f"layer={self.layer}, beta={self.beta:g}, alpha={self.alpha:g}"

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()


def _checked_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (1: the stock MLP, 0: fully converted), got {alpha}")
    return alpha


def installed(model: nn.Module) -> QF2Block | None:
    """The QF2 block installed on this model, if any."""
    parts = arch.architecture_of(model)
    for layer in arch.decoder_layers(model):
        mlp = layer.get_submodule(parts.mlp)
        if isinstance(mlp, QF2Block):
            return mlp
    return None


def install(model: nn.Module, layer: int, beta: float, alpha: float = 0.0) -> QF2Block:
    """Convert ``layer``'s MLP to the QF2 block (alpha 0: fully converted); records beta and
    alpha in ``model.config.qf2``. One block per model."""
    arch.check_layer(model, layer)
    present = installed(model)
    if present is not None:
        raise ValueError(f"a QF2 block is already installed at layer {present.layer}; uninstall it first")
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    settings = {"layer": layer, "beta": float(beta), "alpha": _checked_alpha(alpha)}
    block = QF2Block(model, layer)
    setattr(model.config, CONFIG_KEY, settings)
    arch.decoder_layers(model)[layer].set_submodule(block.parts.mlp, block)
    return block


def uninstall(model: nn.Module) -> None:
    """Put the stock MLP back, remove the hooks and ``config.qf2``; a no-op when none is installed.

    The weights stay as they are: uninstalling a trained block gives the stock *architecture*
    with the converted weights, not the model before conversion.
    """
    block = installed(model)
    if block is None:
        return
    block.remove_hooks()
    arch.decoder_layers(model)[block.layer].set_submodule(block.parts.mlp, block.original)
    delattr(model.config, CONFIG_KEY)


def install_from_config(model: nn.Module) -> QF2Block | None:
    """Re-install the block a converted checkpoint's ``config.qf2`` describes (after
    ``from_pretrained``); None for a stock model."""
    settings = getattr(model.config, CONFIG_KEY, None)
    if settings is None:
        return None
    return install(model, int(settings["layer"]), float(settings["beta"]), float(settings.get("alpha", 0.0)))
