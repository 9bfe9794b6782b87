"""Numbered schema migrations, recorded in ``_migrations`` and run when a store opens.

Each migration is a plain function of a SQLAlchemy ``Connection`` inside the migrating
transaction. Migrations are frozen once released: never edit one, append the next number.
Table definitions are spelled out here (not taken from ``schema.py``) so that migration 1 keeps
creating the version-1 schema however the ORM models evolve.
"""

from __future__ import annotations

import logging
from typing import Callable

from sqlalchemy import (
    JSON, BigInteger, Column, Connection, DateTime, Double, ForeignKey, Integer, LargeBinary, MetaData, String, Table,
    Text, UniqueConstraint, func, insert, select, text,
)

from store.errors import SchemaTooNewError, StoreError
from store.hashing import GENESIS, utcnow

log = logging.getLogger(__name__)

Migration = Callable[[Connection], None]


def _migrations_table(metadata: MetaData) -> Table:
    return Table(
        "_migrations", metadata,
        Column("number", Integer, primary_key=True, autoincrement=False),
        Column("name", String(200), nullable=False),
        Column("applied_at", DateTime(), nullable=False),
    )


def m001_initial(conn: Connection) -> None:
    """Checkpoints, facts, tensor blobs, edits, events, the chain head, sessions and messages."""
    md = MetaData()
    sha = String(64)
    Table("chain", md, Column("id", Integer, primary_key=True, autoincrement=False),
          Column("seq", BigInteger, nullable=False), Column("hash", sha, nullable=False))
    Table("checkpoints", md, Column("id", Integer, primary_key=True), Column("name", Text, nullable=False),
          Column("config_sha256", sha, nullable=False), Column("parameters", JSON, nullable=False),
          Column("dtype", String(32), nullable=False), Column("meta", JSON, nullable=False),
          Column("created_at", DateTime(), nullable=False),
          UniqueConstraint("name", "config_sha256", name="uq_checkpoints_identity"))
    Table("facts", md, Column("id", Integer, primary_key=True), Column("instruction", Text, nullable=False),
          Column("query", Text, nullable=False), Column("answer", Text), Column("significance", JSON),
          Column("status", String(16), nullable=False, index=True),
          Column("supersedes_id", Integer, ForeignKey("facts.id")), Column("source", JSON, nullable=False),
          Column("created_at", DateTime(), nullable=False), Column("approved_at", DateTime()))
    Table("tensor_blobs", md, Column("sha256", sha, primary_key=True), Column("size", BigInteger, nullable=False),
          Column("shapes", JSON, nullable=False), Column("data", LargeBinary), Column("path", Text),
          Column("created_at", DateTime(), nullable=False))
    Table("edits", md, Column("id", Integer, primary_key=True),
          Column("fact_id", Integer, ForeignKey("facts.id"), nullable=False, index=True),
          Column("checkpoint_id", Integer, ForeignKey("checkpoints.id"), nullable=False, index=True),
          Column("method", String(32), nullable=False), Column("layer", Integer, nullable=False),
          Column("parameter", Text, nullable=False), Column("hyperparams", JSON, nullable=False),
          Column("captures_sha256", sha, ForeignKey("tensor_blobs.sha256"), nullable=False),
          Column("factors_sha256", sha, ForeignKey("tensor_blobs.sha256"), nullable=False),
          Column("delta_norm", Double, nullable=False), Column("rank", Integer, nullable=False),
          Column("seq", BigInteger, nullable=False, unique=True), Column("prev_hash", sha, nullable=False),
          Column("hash", sha, nullable=False), Column("verification", Text),
          Column("created_at", DateTime(), nullable=False))
    Table("events", md, Column("id", Integer, primary_key=True),
          Column("seq", BigInteger, nullable=False, unique=True), Column("kind", String(32), nullable=False),
          Column("fact_id", Integer, ForeignKey("facts.id"), index=True),
          Column("edit_id", Integer, ForeignKey("edits.id")),
          Column("checkpoint_id", Integer, ForeignKey("checkpoints.id")),
          Column("payload", JSON, nullable=False), Column("prev_hash", sha, nullable=False),
          Column("hash", sha, nullable=False), Column("created_at", DateTime(), nullable=False))
    Table("sessions", md, Column("id", Integer, primary_key=True), Column("title", Text),
          Column("created_at", DateTime(), nullable=False))
    Table("messages", md, Column("id", Integer, primary_key=True),
          Column("session_id", Integer, ForeignKey("sessions.id"), nullable=False, index=True),
          Column("role", String(32), nullable=False), Column("content", Text, nullable=False),
          Column("created_at", DateTime(), nullable=False))
    md.create_all(conn)
    conn.execute(insert(md.tables["chain"]).values(id=1, seq=0, hash=GENESIS))


def m002_fact_phrasings(conn: Connection) -> None:
    """facts.phrasings: other ways to ask a fact's query, learned with it (NULL: none; older facts)."""
    conn.execute(text("ALTER TABLE facts ADD COLUMN phrasings JSON"))


def m003_fact_subject(conn: Connection) -> None:
    """facts.subject: what the fact's query is asked of, for its anchors (NULL: unknown; older facts)."""
    conn.execute(text("ALTER TABLE facts ADD COLUMN subject TEXT"))


# (number, name, function), strictly increasing numbers; append only.
MIGRATIONS: list[tuple[int, str, Migration]] = [
    (1, "initial", m001_initial),
    (2, "fact_phrasings", m002_fact_phrasings),
    (3, "fact_subject", m003_fact_subject),
]


def latest_version() -> int:
    """The highest migration number this code knows."""
    return MIGRATIONS[-1][0]


def check_order(migrations: list[tuple[int, str, Migration]] = MIGRATIONS) -> None:
    """Refuse a migration list whose numbers are not unique and strictly increasing."""
    numbers = [number for number, _, _ in migrations]
    if any(b <= a for a, b in zip(numbers, numbers[1:])) or len(set(numbers)) != len(numbers):
        raise StoreError(f"migration numbers must be unique and increasing, got {numbers}")


def migrate(conn: Connection, migrations: list[tuple[int, str, Migration]] = MIGRATIONS) -> int:
    """Apply the missing migrations on ``conn`` (already in a write transaction); return the version.

    Raises ``SchemaTooNewError`` when the database has a migration this code does not know."""
    check_order(migrations)
    table = _migrations_table(MetaData())
    table.create(conn, checkfirst=True)
    applied = set(conn.scalars(select(table.c.number)))
    newest = max(applied, default=0)
    known = migrations[-1][0] if migrations else 0
    if newest > known:
        raise SchemaTooNewError(
            f"this ledger was written by a newer qf (schema {newest}, this qf knows up to {known}); upgrade qf"
        )
    for number, name, function in migrations:
        if number in applied:
            continue
        log.info("applying ledger migration %03d_%s", number, name)
        function(conn)
        conn.execute(insert(table).values(number=number, name=name, applied_at=utcnow()))
    return conn.scalar(select(func.max(table.c.number))) or 0
