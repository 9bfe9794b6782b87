"""``Store``: the one object that owns the ledger database (and its tensor directory).

Every public method is one transaction. Writers that extend the hash chain lock it first, so
sequence numbers are taken inside the write transaction and two processes never collide.
Records handed out are frozen dataclasses, never ORM objects.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from store import chat, checkpoints, facts
from store import lifecycle as lc
from store.chain import append, lock_head
from store.engine import make_engine, normalize_url, translated_errors, writer
from store.errors import EditNotFoundError, StoreError
from store.hashing import GENESIS, finite_float, normalize_json
from store.migrations import migrate
from store.records import EditRecord, FactRecord, VerifyReport, checkpoint_dict, edit_record, fact_record
from store.schema import AppliedMigration, ChainHead, Checkpoint, Edit, Fact
from store.tensors import TensorStore
from store.verify import verify as verify_ledger

log = logging.getLogger(__name__)


class Store:
    """The fact ledger at ``url`` (SQLite file or PostgreSQL), tensors under ``tensor_dir``.

    Opening runs the pending migrations; a ledger from a newer qf raises ``SchemaTooNewError``."""

    def __init__(self, url: str, tensor_dir: str | Path, *, busy_timeout: float = 30.0):
        self.url = normalize_url(str(url))
        self.where = make_url(self.url).render_as_string(hide_password=True)
        self.busy_timeout = busy_timeout
        self.tensors = TensorStore(tensor_dir)
        self._engine = make_engine(self.url, busy_timeout)
        self._writer = writer(self._engine)
        try:
            version = self._open(busy_timeout)
        except BaseException:
            self._engine.dispose()
            raise
        log.debug("opened ledger %s (schema %d)", self.where, version)

    def _open(self, busy_timeout: float) -> int:
        """Apply the missing migrations; returns the schema version. SQLite can refuse a lock at
        once, without its busy wait, while another process is creating the same file: such a
        refusal is retried until ``busy_timeout`` has passed, then reported."""
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                with translated_errors("opening the ledger", self.where, busy_timeout):
                    with self._writer.begin() as conn:
                        if conn.dialect.name == "postgresql":  # one migrator at a time across processes
                            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7160000001)")
                        return migrate(conn)
            except StoreError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                log.debug("the ledger is locked while opening; retrying")
                time.sleep(0.05)

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.where!r}, tensor_dir={str(self.tensors.root)!r})"

    # --- transactions -------------------------------------------------------------------
    @contextlib.contextmanager
    def _read(self, what: str) -> Iterator[Session]:
        with translated_errors(what, self.where, self.busy_timeout), Session(self._engine) as session:
            yield session

    @contextlib.contextmanager
    def _write(self, what: str, chain: bool = True) -> Iterator[Session]:
        """One write transaction; all or nothing. ``chain``: lock the hash chain first."""
        with translated_errors(what, self.where, self.busy_timeout):
            with Session(self._writer, expire_on_commit=False) as session, session.begin():
                if chain:
                    lock_head(session)
                yield session

    # --- schema and chain ---------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        """The highest migration applied to this database."""
        with self._read("reading the schema version") as s:
            return s.scalar(select(func.max(AppliedMigration.number))) or 0

    def head(self) -> str:
        """The latest hash of the chain (changes with every fact, edit, undo or redo)."""
        with self._read("reading the chain head") as s:
            head = s.get(ChainHead, 1)
            return head.hash if head else GENESIS

    def verify(self) -> VerifyReport:
        """Recompute the hash chain and every tensor's sha256; report the first mismatch."""
        with self._read("verifying the ledger") as s:
            return verify_ledger(s, self.tensors)

    # --- checkpoints --------------------------------------------------------------------
    def get_or_create_checkpoint(
        self, name: str, config_sha256: str, parameters: dict[str, str], dtype: str, meta: dict | None = None,
    ) -> int:
        """The id of the checkpoint (name, config_sha256); ``parameters``: name -> sha256 of its base value."""
        with self._write("recording a checkpoint") as s:
            return checkpoints.get_or_create(s, name, config_sha256, parameters, dtype, meta)

    def checkpoint(self, checkpoint_id: int) -> dict[str, Any]:
        with self._read("reading a checkpoint") as s:
            return checkpoint_dict(checkpoints.require(s, checkpoint_id))

    def checkpoints(self) -> list[dict[str, Any]]:
        with self._read("listing checkpoints") as s:
            return [checkpoint_dict(row) for row in s.scalars(select(Checkpoint).order_by(Checkpoint.id))]

    # --- facts --------------------------------------------------------------------------
    def add_fact(
        self, instruction: str, query: str, answer: str | None, significance: list[float] | None,
        status: str = lc.PENDING, source: dict | None = None, supersedes_id: int | None = None,
        phrasings: list[str] | None = None, subject: str | None = None,
    ) -> int:
        """A new fact (pending, approved or rejected); returns its id."""
        content = facts.clean_content(instruction, query, answer, significance, source, supersedes_id, phrasings, subject)
        with self._write("adding a fact") as s:
            return facts.insert(s, content, status).id

    def set_fact_status(self, fact_id: int, status: str) -> None:
        """A validated status change, recorded as an event."""
        with self._write(f"changing the status of fact #{fact_id}") as s:
            facts.set_status(s, fact_id, status)

    def undo(self, fact_id: int) -> None:
        """consolidated -> reverted: the fact leaves the weights on the next rebuild."""
        with self._write(f"undoing fact #{fact_id}") as s:
            facts.undo(s, fact_id)

    def redo(self, fact_id: int) -> None:
        """reverted -> consolidated: the fact's edits are active again."""
        with self._write(f"redoing fact #{fact_id}") as s:
            facts.redo(s, fact_id)

    def fact(self, fact_id: int) -> FactRecord:
        with self._read("reading a fact") as s:
            return fact_record(facts.require(s, fact_id))

    def facts(self, status: str | None = None) -> list[FactRecord]:
        """All facts in id order, or those with ``status``."""
        query = select(Fact).order_by(Fact.id)
        if status is not None:
            query = query.where(Fact.status == lc.check_status(status))
        with self._read("listing facts") as s:
            return [fact_record(row) for row in s.scalars(query)]

    # --- edits --------------------------------------------------------------------------
    def record_consolidation(
        self, *, checkpoint_id: int, fact_id: int | None, fact: dict[str, Any] | None, method: str, layer: int,
        parameter: str, hyperparams: dict[str, Any], captures: dict[str, torch.Tensor],
        factors: dict[str, torch.Tensor], delta_norm: float, rank: int,
    ) -> tuple[int, int]:
        """Record one consolidation in ONE transaction; returns (fact_id, edit_id).

        Creates the fact from ``fact`` (keys instruction, query, answer, significance, source,
        supersedes_id, phrasings, subject) when ``fact_id`` is None, marks it consolidated (and the fact it supersedes
        superseded), stores the tensors and appends the edit to the hash chain. Call this *before*
        applying the weights (record before apply)."""
        if (fact_id is None) == (fact is None):
            raise ValueError("record_consolidation needs exactly one of fact_id (an existing fact) or fact (a new one)")
        # clean_content's parameters are the content fields: a key the dict lacks is None there.
        content = None if fact is None else facts.clean_content(**{k: fact.get(k) for k in facts.CONTENT_FIELDS})
        edit = Edit(checkpoint_id=checkpoint_id, method=str(method), layer=int(layer), parameter=str(parameter),
                    hyperparams=normalize_json(hyperparams or {}), delta_norm=finite_float(delta_norm, "delta_norm"),
                    rank=int(rank))
        with self._write("recording a consolidation") as s:
            checkpoints.require(s, checkpoint_id)
            row = facts.insert(s, content, lc.APPROVED) if content is not None else facts.require(s, fact_id)
            facts.check_consolidatable(row)
            edit.fact_id = row.id
            edit.captures_sha256 = self.tensors.put(s, captures)
            edit.factors_sha256 = self.tensors.put(s, factors)
            s.flush()  # the blob rows first: the edit refers to them
            append(s, edit)
            facts.mark_consolidated(s, row, edit.id)
            log.info("recorded edit #%d (seq %d) of fact #%d: %s on %s", edit.id, edit.seq, row.id, method, parameter)
            return row.id, edit.id

    def set_verification(self, edit_id: int, text: str) -> None:
        """The closed-book answer after applying the edit (not part of the hashed content)."""
        with self._write("recording a verification", chain=False) as s:
            self._edit_row(s, edit_id).verification = text

    def active_edits(self, checkpoint_id: int, method: str | None = None) -> list[EditRecord]:
        """Edits on ``checkpoint_id`` of facts that are consolidated, in chain order."""
        query = (select(Edit).join(Fact, Edit.fact_id == Fact.id)
                 .where(Edit.checkpoint_id == checkpoint_id, Fact.status == lc.CONSOLIDATED).order_by(Edit.seq))
        if method is not None:
            query = query.where(Edit.method == method)
        with self._read("listing active edits") as s:
            checkpoints.require(s, checkpoint_id)
            return [edit_record(row) for row in s.scalars(query)]

    def edits_of_fact(self, fact_id: int) -> list[EditRecord]:
        with self._read("listing a fact's edits") as s:
            facts.require(s, fact_id)
            rows = s.scalars(select(Edit).where(Edit.fact_id == fact_id).order_by(Edit.seq))
            return [edit_record(row) for row in rows]

    def edit(self, edit_id: int) -> EditRecord:
        with self._read("reading an edit") as s:
            return edit_record(self._edit_row(s, edit_id))

    def load_captures(self, edit_id: int) -> dict[str, torch.Tensor]:
        """The activations recorded with the edit (verified against their sha256)."""
        with self._read("loading captures") as s:
            return self.tensors.load(s, self._edit_row(s, edit_id).captures_sha256, f"captures of edit #{edit_id}")

    def load_factors(self, edit_id: int) -> dict[str, torch.Tensor]:
        """The delta's low-rank factors (verified against their sha256)."""
        with self._read("loading factors") as s:
            return self.tensors.load(s, self._edit_row(s, edit_id).factors_sha256, f"factors of edit #{edit_id}")

    @staticmethod
    def _edit_row(session: Session, edit_id: int) -> Edit:
        row = session.get(Edit, edit_id)
        if row is None:
            raise EditNotFoundError(f"no edit #{edit_id} in the ledger; see `qf facts show ID` for a fact's edits")
        return row

    # --- chat sessions ------------------------------------------------------------------
    def create_session(self, title: str | None = None) -> int:
        with self._write("creating a chat session", chain=False) as s:
            return chat.create_session(s, title)

    def add_message(self, session_id: int, role: str, content: str) -> int:
        with self._write("saving a chat message", chain=False) as s:
            return chat.add_message(s, session_id, role, content)

    def messages(self, session_id: int) -> list[dict[str, Any]]:
        with self._read("reading chat messages") as s:
            return chat.messages(s, session_id)

    def sessions(self) -> list[dict[str, Any]]:
        with self._read("listing chat sessions") as s:
            return chat.sessions(s)
