"""Tensor blobs at rest: safetensors bytes, inline in the database when small, else files.

Blobs are content addressed by the sha256 of their safetensors bytes. Files live at
``<tensor_dir>/<sha[:2]>/<sha>.safetensors`` and are written atomically (temporary file, fsync,
``os.replace``), so a crash never leaves a half-written blob under its final name; an orphan file
from a rolled-back transaction is harmless because its name is its content. Every read re-hashes
the bytes and raises ``TensorIntegrityError`` rather than hand out tensors that do not match.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from sqlalchemy.orm import Session

from store.errors import TensorIntegrityError
from store.hashing import sha256_hex, utcnow
from store.schema import TensorBlob

log = logging.getLogger(__name__)

INLINE_LIMIT = 100_000  # bytes; larger blobs go to files


def encode(tensors: dict[str, torch.Tensor]) -> bytes:
    """Safetensors bytes of ``tensors`` (detached, on CPU, contiguous, not sharing storage)."""
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        raise ValueError("tensors must be a dict of str -> torch.Tensor")
    # clone: safetensors refuses tensors that share storage (e.g. two views of one buffer)
    return st_save({name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()})


def shapes_of(tensors: dict[str, torch.Tensor]) -> dict[str, dict]:
    return {name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)} for name, t in tensors.items()}


class TensorStore:
    """Puts and gets tensor blobs; rows in ``tensor_blobs``, large payloads under ``root``."""

    def __init__(self, root: str | Path, inline_limit: int = INLINE_LIMIT):
        self.root = Path(root).expanduser()
        self.inline_limit = inline_limit

    def relative_path(self, sha: str) -> str:
        return f"{sha[:2]}/{sha}.safetensors"

    def put(self, session: Session, tensors: dict[str, torch.Tensor]) -> str:
        """Store ``tensors`` (if not already there) in the current transaction; return their sha256."""
        data = encode(tensors)
        sha = sha256_hex(data)
        existing = session.get(TensorBlob, sha)
        if existing is not None:
            if existing.path is not None:
                self._write_file(sha, data)  # heals a missing or damaged file of the same content
            return sha
        blob = TensorBlob(sha256=sha, size=len(data), shapes=shapes_of(tensors), created_at=utcnow())
        if len(data) <= self.inline_limit:
            blob.data = data
        else:
            blob.path = self._write_file(sha, data)
        session.add(blob)
        return sha

    def _write_file(self, sha: str, data: bytes) -> str:
        relative = self.relative_path(sha)
        final = self.root / relative
        if final.is_file() and final.stat().st_size == len(data) and sha256_hex(final.read_bytes()) == sha:
            return relative
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{sha[:12]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.debug("wrote tensor blob %s (%d bytes)", relative, len(data))
        return relative

    def read_bytes(self, blob: TensorBlob, owner: str = "") -> bytes:
        """The blob's bytes, verified against its sha256 and size; else ``TensorIntegrityError``."""
        label = f"tensor blob {blob.sha256[:12]}" + (f" ({owner})" if owner else "")
        if blob.data is not None:
            data, where = bytes(blob.data), "in the database"
        elif blob.path is not None:
            file = self.root / blob.path
            if not file.is_file():
                raise TensorIntegrityError(
                    f"{label}: file {file} is missing; restore the tensor directory {self.root} from a backup"
                )
            data, where = file.read_bytes(), f"file {file}"
        else:
            raise TensorIntegrityError(f"{label}: the row has neither data nor a file path")
        actual = sha256_hex(data)
        if actual != blob.sha256 or len(data) != blob.size:
            raise TensorIntegrityError(
                f"{label}: {where} does not match its record (sha256 {actual[:12]}, {len(data)} bytes; "
                f"expected {blob.sha256[:12]}, {blob.size} bytes): it was modified or truncated; "
                "restore it from a backup or undo the fact"
            )
        return data

    def load(self, session: Session, sha: str, owner: str = "") -> dict[str, torch.Tensor]:
        """The tensors stored under ``sha``, verified."""
        blob = session.get(TensorBlob, sha)
        if blob is None:
            raise TensorIntegrityError(f"tensor blob {sha[:12]} ({owner}) has no row in tensor_blobs")
        return st_load(self.read_bytes(blob, owner))
