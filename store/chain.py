"""The hash chain: edits and events share one sequence, each link hashing its predecessor.

A link's hash is ``sha256(prev_hash + "\\n" + canonical JSON of its hashed fields)``; an edit's
fields include the sha256 of its captures and factors, so the chain covers the tensors too.
The single ``chain`` row holds the last sequence number and hash; every appending transaction
locks it (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already holds
the database write lock), so concurrent writers get distinct, gap-free sequence numbers.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.errors import StoreError
from store.hashing import iso, link_hash, normalize_json, utcnow
from store.schema import ChainHead, Edit, Event


def edit_content(edit: Edit) -> dict[str, Any]:
    """The fields of an edit that its hash covers (everything but ``verification`` and the hashes)."""
    return {
        "link": "edit", "id": edit.id, "seq": edit.seq, "fact_id": edit.fact_id, "checkpoint_id": edit.checkpoint_id,
        "method": edit.method, "layer": edit.layer, "parameter": edit.parameter, "hyperparams": edit.hyperparams,
        "captures_sha256": edit.captures_sha256, "factors_sha256": edit.factors_sha256,
        "delta_norm": float(edit.delta_norm), "rank": edit.rank, "created_at": iso(edit.created_at),
    }


def event_content(event: Event) -> dict[str, Any]:
    """The fields of an event that its hash covers."""
    return {
        "link": "event", "id": event.id, "seq": event.seq, "kind": event.kind, "fact_id": event.fact_id,
        "edit_id": event.edit_id, "checkpoint_id": event.checkpoint_id, "payload": event.payload,
        "created_at": iso(event.created_at),
    }


def content_of(link: Edit | Event) -> dict[str, Any]:
    return edit_content(link) if isinstance(link, Edit) else event_content(link)


def lock_head(session: Session) -> ChainHead:
    """The chain head row, locked for this transaction (a no-op lock on SQLite, see above)."""
    head = session.scalars(select(ChainHead).where(ChainHead.id == 1).with_for_update()).one_or_none()
    if head is None:
        raise StoreError("the ledger has no chain head row; it was not created by qf's migrations")
    return head


def append(session: Session, link: Edit | Event) -> Edit | Event:
    """Give ``link`` the next sequence number, insert it and chain its hash; returns it (with id)."""
    head = lock_head(session)
    link.seq, link.prev_hash, link.hash = head.seq + 1, head.hash, ""
    link.created_at = utcnow()
    session.add(link)
    session.flush()  # assigns link.id, which the hash covers
    link.hash = link_hash(link.prev_hash, content_of(link))
    head.seq, head.hash = link.seq, link.hash
    session.flush()
    return link


def append_event(
    session: Session, kind: str, payload: dict[str, Any], *, fact_id: int | None = None,
    edit_id: int | None = None, checkpoint_id: int | None = None,
) -> Event:
    """Append one event link (payload normalised to its JSON read-back form)."""
    event = Event(kind=kind, fact_id=fact_id, edit_id=edit_id, checkpoint_id=checkpoint_id,
                  payload=normalize_json(payload))
    return append(session, event)
