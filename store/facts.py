"""Facts in the ledger: creating them and moving them through their life cycle, one event each.

Every function here runs inside a write transaction opened by ``Store``; the events it appends are
links of the hash chain, so a fact's content and status can be re-derived from the chain alone
(``verify`` does exactly that).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from store import lifecycle as lc
from store.chain import append_event
from store.errors import FactNotFoundError, InvalidTransitionError
from store.hashing import finite_float, normalize_json, utcnow
from store.schema import Fact

CONTENT_FIELDS = ("instruction", "query", "answer", "significance", "source", "supersedes_id", "phrasings", "subject")


def require(session: Session, fact_id: int) -> Fact:
    row = session.get(Fact, fact_id)
    if row is None:
        raise FactNotFoundError(f"no fact #{fact_id} in the ledger; see `qf facts list` for the ids")
    return row


def clean_content(
    instruction: str, query: str, answer: str | None, significance: list[float] | None,
    source: dict | None, supersedes_id: int | None, phrasings: list[str] | None = None, subject: str | None = None,
) -> dict[str, Any]:
    """Validated fact content, in the form it reads back from the database (no phrasings, no subject: None)."""
    if not isinstance(instruction, str) or not isinstance(query, str):
        raise ValueError("a fact needs an instruction and a query (strings)")
    if answer is not None and not isinstance(answer, str):
        raise ValueError("a fact's answer must be a string or None")
    if phrasings is not None and not all(isinstance(p, str) and p.strip() for p in phrasings):
        raise ValueError("a fact's phrasings must be non-empty strings")
    if subject is not None and not isinstance(subject, str):
        raise ValueError("a fact's subject must be a string or None")
    weights = None if significance is None else [finite_float(w, "significance") for w in significance]
    return {"instruction": instruction, "query": query, "answer": answer, "significance": weights,
            "source": normalize_json(source or {}), "supersedes_id": supersedes_id,
            "phrasings": list(phrasings) if phrasings else None, "subject": (subject or "").strip() or None}


def insert(session: Session, content: dict[str, Any], status: str) -> Fact:
    """A new fact with ``content`` (from ``clean_content``) and an initial status; a 'create' event."""
    lc.check_status(status)
    if status not in lc.INITIAL:
        raise InvalidTransitionError(
            f"a new fact starts as {', '.join(lc.INITIAL)}; it becomes {status} only by consolidation or a later change"
        )
    if content["supersedes_id"] is not None:
        require(session, content["supersedes_id"])
    now = utcnow()
    row = Fact(**content, status=status, created_at=now, approved_at=now if status == lc.APPROVED else None)
    session.add(row)
    session.flush()
    append_event(session, "create", {**content, "status": status}, fact_id=row.id)
    return row


def transition(session: Session, row: Fact, new: str, kind: str, edit_id: int | None = None, **extra: Any) -> None:
    """Set ``row.status`` to ``new`` (already validated) and append the event that records it."""
    old, row.status = row.status, new
    if new in (lc.APPROVED, lc.CONSOLIDATED) and row.approved_at is None:
        row.approved_at = utcnow()
    append_event(session, kind, {"from": old, "to": new, **extra}, fact_id=row.id, edit_id=edit_id)


def set_status(session: Session, fact_id: int, status: str) -> None:
    """A validated status change (kind 'status'). Only facts that were consolidated before (so have
    an edit) can become consolidated here; a first consolidation goes through record_consolidation."""
    row = require(session, fact_id)
    lc.check_transition(fact_id, row.status, status)
    transition(session, row, status, "status")


def undo(session: Session, fact_id: int) -> None:
    row = require(session, fact_id)
    if row.status != lc.CONSOLIDATED:
        raise InvalidTransitionError(
            f"fact #{fact_id} is {row.status}, not consolidated; only consolidated facts can be undone"
        )
    transition(session, row, lc.REVERTED, "undo")


def redo(session: Session, fact_id: int) -> None:
    row = require(session, fact_id)
    if row.status != lc.REVERTED:
        raise InvalidTransitionError(
            f"fact #{fact_id} is {row.status}, not reverted; only reverted facts can be redone"
        )
    transition(session, row, lc.CONSOLIDATED, "redo")


def check_consolidatable(row: Fact) -> None:
    """Raise unless ``row`` may receive an edit (pending, approved, or consolidated already)."""
    if row.status not in lc.CONSOLIDATABLE:
        hint = {lc.REVERTED: "; redo it instead", lc.REJECTED: "; approve it first"}.get(row.status, "")
        raise InvalidTransitionError(
            f"fact #{row.id} is {row.status}; only pending, approved or consolidated facts can be consolidated{hint}"
        )


def mark_consolidated(session: Session, row: Fact, edit_id: int) -> None:
    """After an edit of ``row`` was appended: consolidate it and supersede the fact it replaces."""
    check_consolidatable(row)
    if row.status == lc.CONSOLIDATED:
        return  # a further edit (another checkpoint): the edit link itself is the record
    transition(session, row, lc.CONSOLIDATED, "consolidate", edit_id=edit_id)
    if row.supersedes_id is not None:
        older = require(session, row.supersedes_id)
        if older.status in (lc.CONSOLIDATED, lc.REVERTED):
            transition(session, older, lc.SUPERSEDED, "supersede", by=row.id)


def expected_state(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """A fact's content and status re-derived from its events in chain order (for ``verify``)."""
    state: dict[str, Any] = {}
    for kind, payload in events:
        if kind == "create":
            # .get: facts created before a field existed (phrasings, migration 2; subject, 3) have None there.
            state = {k: payload.get(k) for k in (*CONTENT_FIELDS, "status")}
        elif "to" in payload:
            state["status"] = payload["to"]
    return state
