"""Opening the database: SQLite pragmas and write locking, PostgreSQL URLs, error translation.

SQLite: WAL, foreign keys on, a busy timeout, and SQLAlchemy (not the sqlite3 driver) emits
BEGIN, so that write transactions can start with ``BEGIN IMMEDIATE`` (take the write lock first,
then read the sequence number: two processes never compute the same one). See the SQLAlchemy docs,
"Transactions with SQLite and the sqlite3 driver". PostgreSQL writers lock the chain row instead.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from store.errors import StoreError

log = logging.getLogger(__name__)

WRITE = "qf_write"  # execution option: this connection's transactions take the write lock


def normalize_url(url: str) -> str:
    """A SQLAlchemy URL: plain paths become SQLite files; bare postgresql:// uses psycopg 3."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser()}"
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str, busy_timeout: float = 30.0) -> Engine:
    """An engine for ``url``; SQLite files get their directory created and the pragmas set."""
    sa_url = make_url(normalize_url(url))
    if sa_url.get_backend_name() == "sqlite":
        return _sqlite_engine(sa_url, busy_timeout)
    if sa_url.get_backend_name() != "postgresql":
        raise StoreError(
            f"unsupported ledger database {sa_url.get_backend_name()!r}: use sqlite:///PATH or postgresql+psycopg://..."
        )
    try:
        return create_engine(sa_url, pool_pre_ping=True)
    except ImportError as exc:
        raise StoreError("a PostgreSQL ledger needs psycopg: pip install 'psycopg[binary]'") from exc


def _sqlite_engine(sa_url, busy_timeout: float) -> Engine:
    database = sa_url.database
    in_memory = database in (None, "", ":memory:")
    if not in_memory:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    options = {"poolclass": StaticPool} if in_memory else {}  # one shared connection, or each sees its own DB
    engine = create_engine(sa_url, connect_args={"timeout": busy_timeout, "check_same_thread": False}, **options)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        if not in_memory:
            _enable_wal(cursor, busy_timeout)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")

    return engine


def _enable_wal(cursor, timeout: float) -> None:
    """Switch the file to WAL (persistent: only its first opener changes it). The switch needs an
    exclusive lock and SQLite may refuse it at once, without waiting on the busy handler, when
    another process opens the same new file at that moment: retry until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def writer(engine: Engine) -> Engine:
    """The same engine whose transactions take the write lock up front."""
    return engine.execution_options(**{WRITE: True})


@contextlib.contextmanager
def translated_errors(what: str, where: str, busy_timeout: float) -> Iterator[None]:
    """Turn driver and file-system failures during ``what`` into a ``StoreError`` that says what to do."""
    try:
        yield
    except StoreError:
        raise
    except OperationalError as exc:
        text = str(exc.orig).lower()
        if "locked" in text or "busy" in text:
            raise StoreError(
                f"{what}: the ledger {where} is locked by another process (busy timeout {busy_timeout:g}s); "
                "wait for the other qf process to finish, or close it, and retry"
            ) from exc
        if "full" in text:
            raise StoreError(
                f"{what}: the disk holding the ledger {where} is full; nothing was written; free space and retry"
            ) from exc
        raise StoreError(f"{what}: database error on {where}: {exc.orig}") from exc
    except (DBAPIError, SQLAlchemyError) as exc:
        raise StoreError(f"{what}: database error on {where}: {getattr(exc, 'orig', exc)}") from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StoreError(
                f"{what}: no space left for the ledger's tensor files; nothing was recorded; free space and retry"
            ) from exc
        raise StoreError(f"{what}: could not write the ledger's tensor files: {exc}") from exc
