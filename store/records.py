"""Plain frozen records handed out by the store (never ORM objects, which die with their session)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class FactRecord:
    """One fact: the (instruction, query, answer) triple, per-token significance and its status."""

    id: int
    instruction: str
    query: str
    answer: str | None
    significance: list[float] | None
    status: str
    supersedes_id: int | None
    source: dict[str, Any]
    created_at: datetime
    approved_at: datetime | None
    phrasings: list[str] | None = None  # other ways to ask the query, learned with it
    subject: str | None = None  # what the query is asked of (anchors, memory.anchors)


@dataclass(frozen=True)
class EditRecord:
    """One consolidation of a fact on a checkpoint: where it wrote, how big, and its chain hash."""

    id: int
    fact_id: int
    checkpoint_id: int
    seq: int
    method: str
    layer: int
    parameter: str
    hyperparams: dict[str, Any]
    delta_norm: float
    rank: int
    verification: str | None
    created_at: datetime
    hash: str
    captures_sha256: str = ""
    factors_sha256: str = ""


@dataclass(frozen=True)
class VerifyReport:
    """Result of ``Store.verify``: ``first_mismatch`` names the first bad row, or is None."""

    ok: bool
    checked: int
    first_mismatch: str | None


def fact_record(row) -> FactRecord:
    """A ``FactRecord`` from a ``schema.Fact`` row (read inside its session)."""
    return FactRecord(
        id=row.id, instruction=row.instruction, query=row.query, answer=row.answer,
        significance=list(row.significance) if row.significance is not None else None, status=row.status,
        supersedes_id=row.supersedes_id, source=dict(row.source or {}), created_at=row.created_at,
        approved_at=row.approved_at, phrasings=list(row.phrasings) if row.phrasings else None, subject=row.subject,
    )


def edit_record(row) -> EditRecord:
    """An ``EditRecord`` from a ``schema.Edit`` row (read inside its session)."""
    return EditRecord(
        id=row.id, fact_id=row.fact_id, checkpoint_id=row.checkpoint_id, seq=row.seq, method=row.method,
        layer=row.layer, parameter=row.parameter, hyperparams=dict(row.hyperparams or {}),
        delta_norm=float(row.delta_norm), rank=row.rank, verification=row.verification, created_at=row.created_at,
        hash=row.hash, captures_sha256=row.captures_sha256, factors_sha256=row.factors_sha256,
    )


def checkpoint_dict(row) -> dict[str, Any]:
    """A plain dict from a ``schema.Checkpoint`` row."""
    return {
        "id": row.id, "name": row.name, "config_sha256": row.config_sha256, "parameters": dict(row.parameters),
        "dtype": row.dtype, "meta": dict(row.meta or {}), "created_at": row.created_at,
    }
