"""The ledger's tables as SQLAlchemy 2 typed declarative mappings.

This is the *current* shape of the schema, used for queries. The database itself is created and
changed only by the numbered functions in ``migrations.py``; a test checks that the two agree.
All timestamps are naive UTC (see ``hashing.utcnow``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON, BigInteger, DateTime, Double, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from store.hashing import utcnow

SHA = String(64)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[float]: JSON, list[str]: JSON, datetime: DateTime()}


class AppliedMigration(Base):
    """One applied migration (number, name, when)."""

    __tablename__ = "_migrations"
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(200))
    applied_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChainHead(Base):
    """The single row (id 1) holding the chain's last sequence number and hash; writers lock it."""

    __tablename__ = "chain"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(SHA)


class Checkpoint(Base):
    """A base model identity: the thing deltas are valid against."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("name", "config_sha256", name="uq_checkpoints_identity"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    config_sha256: Mapped[str] = mapped_column(SHA)
    parameters: Mapped[dict[str, Any]]  # parameter name -> sha256 of its base value
    dtype: Mapped[str] = mapped_column(String(32))
    meta: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Fact(Base):
    """An (instruction, query, answer) triple with per-token significance and a status."""

    __tablename__ = "facts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instruction: Mapped[str] = mapped_column(Text)
    query: Mapped[str] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(Text)
    significance: Mapped[list[float] | None]
    phrasings: Mapped[list[str] | None]  # other ways to ask the query (migration 2); None: none
    subject: Mapped[str | None] = mapped_column(Text)  # what the query is asked of (migration 3); None: unknown
    status: Mapped[str] = mapped_column(String(16), index=True)
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("facts.id"))
    source: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    approved_at: Mapped[datetime | None]


class TensorBlob(Base):
    """A safetensors blob by content: inline ``data`` when small, else a file at ``path``."""

    __tablename__ = "tensor_blobs"
    sha256: Mapped[str] = mapped_column(SHA, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    shapes: Mapped[dict[str, Any]]  # tensor name -> {"dtype": ..., "shape": [...]}
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    path: Mapped[str | None] = mapped_column(Text)  # relative to the store's tensor_dir
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Edit(Base):
    """One consolidation of a fact on a checkpoint; a link of the hash chain."""

    __tablename__ = "edits"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fact_id: Mapped[int] = mapped_column(ForeignKey("facts.id"), index=True)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"), index=True)
    method: Mapped[str] = mapped_column(String(32))
    layer: Mapped[int] = mapped_column(Integer)
    parameter: Mapped[str] = mapped_column(Text)
    hyperparams: Mapped[dict[str, Any]]
    captures_sha256: Mapped[str] = mapped_column(ForeignKey("tensor_blobs.sha256"))
    factors_sha256: Mapped[str] = mapped_column(ForeignKey("tensor_blobs.sha256"))
    delta_norm: Mapped[float] = mapped_column(Double)
    rank: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    prev_hash: Mapped[str] = mapped_column(SHA)
    hash: Mapped[str] = mapped_column(SHA)
    verification: Mapped[str | None] = mapped_column(Text)  # not hashed: written after applying
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    """A fact or checkpoint event (create, status change, undo, redo, ...); a link of the chain."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    fact_id: Mapped[int | None] = mapped_column(ForeignKey("facts.id"), index=True)
    edit_id: Mapped[int | None] = mapped_column(ForeignKey("edits.id"))
    checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id"))
    payload: Mapped[dict[str, Any]]
    prev_hash: Mapped[str] = mapped_column(SHA)
    hash: Mapped[str] = mapped_column(SHA)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChatSession(Base):
    """A chat session (the agent's conversation history); not part of the hash chain."""

    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Message(Base):
    """One chat message of a session."""

    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    role: Mapped[str] = mapped_column(String(32))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
