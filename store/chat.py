"""Chat sessions and messages (the agent's history). Not hash chained: they are not ledger facts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.errors import SessionNotFoundError
from store.hashing import utcnow
from store.schema import ChatSession, Message


def create_session(session: Session, title: str | None) -> int:
    row = ChatSession(title=title, created_at=utcnow())
    session.add(row)
    session.flush()
    return row.id


def _require(session: Session, session_id: int) -> ChatSession:
    row = session.get(ChatSession, session_id)
    if row is None:
        raise SessionNotFoundError(f"no chat session #{session_id}; start a new session instead")
    return row


def add_message(session: Session, session_id: int, role: str, content: str) -> int:
    _require(session, session_id)
    if not role:
        raise ValueError("a message needs a role (user, assistant, system, ...)")
    row = Message(session_id=session_id, role=role, content=content, created_at=utcnow())
    session.add(row)
    session.flush()
    return row.id


def messages(session: Session, session_id: int) -> list[dict[str, Any]]:
    _require(session, session_id)
    rows = session.scalars(select(Message).where(Message.session_id == session_id).order_by(Message.id))
    return [{"id": m.id, "role": m.role, "content": m.content, "created_at": m.created_at} for m in rows]


def sessions(session: Session) -> list[dict[str, Any]]:
    counts = select(Message.session_id, func.count(Message.id).label("n")).group_by(Message.session_id).subquery()
    rows = session.execute(
        select(ChatSession, func.coalesce(counts.c.n, 0)).outerjoin(counts, counts.c.session_id == ChatSession.id)
        .order_by(ChatSession.id)
    )
    return [{"id": s.id, "title": s.title, "created_at": s.created_at, "messages": n} for s, n in rows]
