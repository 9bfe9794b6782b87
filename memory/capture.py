"""Activation capture with forward pre-hooks, as a context manager (baukit ``Trace`` pattern).

    with Capture(model, ["model.layers.23.mlp.down_proj"], stop=True) as cap:
        cap.run(input_ids=ids)
    cap.inputs["model.layers.23.mlp.down_proj"]  # (batch, seq, D)

Hooks are always removed on exit, also on exceptions. With ``stop=True`` the forward pass is
cut short once every module has been seen: nothing downstream is computed (no later layers,
no lm_head), which is all a capture needs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def right_padded_ids(sequences: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their attention mask, (B, L) each: causal attention keeps a sequence's
    positions blind to the padding after it, so a batch captures what each sequence alone would."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    return ids, mask


class _StopForward(Exception):
    pass


class Capture:
    def __init__(self, model: nn.Module, names: Iterable[str], stop: bool = False):
        self.model = model
        self.names = list(dict.fromkeys(names))
        self.stop = stop
        self.inputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str):
        def hook(module, args):
            self.inputs[name] = args[0].detach()
            if self.stop and len(self.inputs) == len(self.names):
                raise _StopForward

        return hook

    def __enter__(self) -> "Capture":
        try:
            for name in self.names:
                module = self.model.get_submodule(name)
                self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        except BaseException:
            self.close()
            raise
        return self

    def run(self, **inputs):
        """One forward pass under the hooks; returns the model output (None when stopped)."""
        self.inputs.clear()
        output = None
        try:
            with torch.no_grad():
                output = self.model(**inputs)
        except _StopForward:
            pass
        missing = [n for n in self.names if n not in self.inputs]
        if missing:
            raise RuntimeError(f"modules never ran during the forward pass: {missing}")
        return output

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc) -> None:
        self.close()
