"""A low-rank weight delta: its factors, its target parameter and the base it was computed on.

``dW = left @ right`` with left (N, r) and right (r, D). Apply/revert mutate the model under
``torch.no_grad()`` and refuse non-finite factors before any write (DESIGN.md §5.5, §5.6).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn


class NonFiniteDeltaError(ValueError):
    pass


class BaseMismatchError(ValueError):
    pass


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's raw bytes (contiguous, on CPU) prefixed by dtype and shape."""
    t = tensor.detach().contiguous().cpu()
    digest = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@contextmanager
def weight_set_to(model: nn.Module, parameter: str, value: torch.Tensor) -> Iterator[None]:
    """Run the body with ``parameter`` holding ``value`` (e.g. its base weights); its own value after."""
    weight = model.get_parameter(parameter)
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.copy_(value.to(weight.device, weight.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            weight.copy_(saved)


@dataclass
class LowRankDelta:
    left: torch.Tensor  # (N, r)
    right: torch.Tensor  # (r, D)
    parameter: str  # full name, e.g. "model.layers.23.mlp.down_proj.weight"
    base_sha256: str  # sha256 of the parameter's base value (tensor_sha256)
    model: str = ""  # model identity (registry name or path)
    layer: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    # (value before apply, weight._version right after apply): lets revert be bit-exact.
    _saved: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def rank(self) -> int:
        return self.left.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return self.left.shape[0], self.right.shape[1]

    def dense(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return self.left.to(dtype) @ self.right.to(dtype)

    def norm(self) -> float:
        """Frobenius norm of dW, from the factors: sqrt(tr((L^T L)(R R^T)))."""
        lt = self.left.double().T @ self.left.double()
        rr = self.right.double() @ self.right.double().T
        return float(torch.sqrt(torch.clamp((lt * rr).sum(), min=0.0)))

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.left).all() and torch.isfinite(self.right).all())

    def _weight(self, model: nn.Module) -> torch.Tensor:
        weight = model.get_parameter(self.parameter)
        if tuple(weight.shape) != self.shape:
            raise BaseMismatchError(f"{self.parameter} has shape {tuple(weight.shape)}, the delta {self.shape}")
        return weight

    def _checked_dense(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.is_finite():
            raise NonFiniteDeltaError(f"refusing to write a non-finite delta into {self.parameter}")
        # float32 products (float64 for float64 weights): accurate to ~1e-7 relative, and fast.
        dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        dW = (self.left.to(weight.device, dtype) @ self.right.to(weight.device, dtype)).to(weight.dtype)
        if not bool(torch.isfinite(dW).all()):
            raise NonFiniteDeltaError(f"delta for {self.parameter} overflows {weight.dtype}")
        return dW

    @torch.no_grad()
    def apply(self, model: nn.Module, keep_for_revert: bool = True) -> None:
        """weight += dW. With ``keep_for_revert`` the previous value is kept so that ``revert``
        restores it bit for bit (one copy of the matrix); callers that rebuild from W0 skip it."""
        weight = self._weight(model)
        dW = self._checked_dense(weight)
        before = weight.detach().clone() if keep_for_revert else None
        weight.add_(dW)
        self._saved = (before, weight._version) if keep_for_revert else None

    @torch.no_grad()
    def revert(self, model: nn.Module) -> None:
        """Undo ``apply``: bit for bit when the weight was not written since; else weight -= dW."""
        weight = self._weight(model)
        if self._saved is not None and self._saved[1] == weight._version:
            weight.copy_(self._saved[0])
        else:
            weight.sub_(self._checked_dense(weight))
        self._saved = None

    # --- safetensors -------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        meta = {
            "parameter": self.parameter,
            "base_sha256": self.base_sha256,
            "model": self.model,
            "layer": "" if self.layer is None else str(self.layer),
            "extra": json.dumps(self.metadata, sort_keys=True),
        }
        tensors = {"left": self.left.detach().contiguous().cpu(), "right": self.right.detach().contiguous().cpu()}
        return st_save(tensors, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> "LowRankDelta":
        tensors = st_load(data)
        meta = _safetensors_metadata(data)
        return cls(
            left=tensors["left"],
            right=tensors["right"],
            parameter=meta["parameter"],
            base_sha256=meta["base_sha256"],
            model=meta.get("model", ""),
            layer=int(meta["layer"]) if meta.get("layer") else None,
            metadata=json.loads(meta.get("extra", "{}")),
        )


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return header.get("__metadata__", {})
