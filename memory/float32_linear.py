"""Keep one edited matrix in float32 inside a bf16/fp16 model (DESIGN.md §3).

The Linear is swapped for a subclass with the same parameter names, so ``state_dict`` keys and
``get_parameter`` paths are unchanged; its forward casts the input up and the output back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Float32Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias
        return F.linear(x.to(self.weight.dtype), self.weight, bias).to(x.dtype)


def keep_float32(model: nn.Module, module_name: str) -> nn.Linear:
    """Make ``module_name`` (an nn.Linear) compute and store in float32; idempotent."""
    module = model.get_submodule(module_name)
    if isinstance(module, Float32Linear):
        return module
    if type(module) is not nn.Linear:
        raise TypeError(f"{module_name} is a {type(module).__name__}, expected nn.Linear")
    with torch.no_grad():
        module.float()
    module.__class__ = Float32Linear
    return module
