"""Canonical JSON, sha256 and timestamps: the pieces that must hash the same on every database.

The hash chain is computed from values *as they come back from the database*, so everything that
goes into it is normalised first: JSON goes through one canonical text form (sorted keys, no NaN),
floats are IEEE doubles (``repr`` round-trips them exactly) and timestamps are naive UTC with
microseconds, which both SQLite and PostgreSQL store losslessly.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from typing import Any

GENESIS = "0" * 64  # prev_hash of the first link in the chain


def canonical_json(value: Any) -> str:
    """One text form per JSON value: sorted keys, compact separators, UTF-8, no NaN/Infinity."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"value cannot be stored as JSON ({exc}); pass plain str/int/float/bool/list/dict") from exc


def normalize_json(value: Any) -> Any:
    """``value`` as it will read back from a JSON column (tuples become lists, keys strings)."""
    return json.loads(canonical_json(value))


def finite_float(value: float, name: str) -> float:
    """``value`` as a float, refusing NaN and infinities (JSON and the chain cannot carry them)."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utcnow() -> datetime:
    """Naive UTC now: stored and read back identically by SQLite and PostgreSQL."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def iso(moment: datetime | None) -> str | None:
    """The timestamp's text form inside hashed content (fixed precision, no timezone suffix)."""
    if moment is None:
        return None
    if moment.tzinfo is not None:  # e.g. a driver that returns aware datetimes
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds")


def link_hash(prev_hash: str, content: dict[str, Any]) -> str:
    """sha256(prev_hash, newline, canonical JSON of the link's hashed fields)."""
    return sha256_hex(prev_hash.encode("ascii") + b"\n" + canonical_json(content).encode("utf-8"))
