"""A fact's statuses and the transitions between them (DESIGN.md §3).

Nothing is deleted: a fact leaves the weights by becoming reverted, superseded or rejected, and
every change is an event in the hash chain. ``consolidated`` is reached only by recording an edit
(``Store.record_consolidation``) or by re-activating a fact that already has one (redo).
"""

from __future__ import annotations

from store.errors import InvalidTransitionError

PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"
CONSOLIDATED, REVERTED, SUPERSEDED = "consolidated", "reverted", "superseded"
STATUSES = (PENDING, APPROVED, REJECTED, CONSOLIDATED, REVERTED, SUPERSEDED)

# Statuses a new fact may start in (consolidated needs an edit: record_consolidation).
INITIAL = (PENDING, APPROVED, REJECTED)

# Statuses from which record_consolidation may (re)consolidate a fact; consolidated -> consolidated
# is a further edit, e.g. a replay of the fact onto another checkpoint.
CONSOLIDATABLE = (PENDING, APPROVED, CONSOLIDATED)

TRANSITIONS: dict[str, tuple[str, ...]] = {
    PENDING: (APPROVED, REJECTED),
    APPROVED: (PENDING, REJECTED),
    REJECTED: (PENDING, APPROVED),
    CONSOLIDATED: (REVERTED, SUPERSEDED),
    REVERTED: (CONSOLIDATED, SUPERSEDED, REJECTED),
    SUPERSEDED: (CONSOLIDATED, REVERTED),
}


def check_status(status: str) -> str:
    if status not in STATUSES:
        raise InvalidTransitionError(f"unknown fact status {status!r}; use one of {', '.join(STATUSES)}")
    return status


def check_transition(fact_id: int, old: str, new: str) -> None:
    """Raise ``InvalidTransitionError`` unless ``old -> new`` is allowed."""
    check_status(new)
    if new == old:
        raise InvalidTransitionError(f"fact #{fact_id} is already {old}")
    if new not in TRANSITIONS[old]:
        allowed = ", ".join(TRANSITIONS[old]) or "nothing"
        raise InvalidTransitionError(f"fact #{fact_id} is {old}; it can become {allowed}, not {new}")
