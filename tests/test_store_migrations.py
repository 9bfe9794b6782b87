"""Ledger migrations: a blank database gets the full schema; versions are checked and recorded."""

from __future__ import annotations

import pytest
from pg_url import store, store_url  # noqa: F401  (pytest fixtures)
from sqlalchemy import create_engine, inspect, text

from store import SchemaTooNewError, Store, StoreError
from store.migrations import MIGRATIONS, check_order, latest_version, migrate
from store.schema import Base

EXPECTED_TABLES = {"_migrations", "chain", "checkpoints", "facts", "edits", "tensor_blobs", "events", "sessions", "messages"}


def test_blank_database_gets_every_table_and_column(store, store_url):
    engine = create_engine(store_url)
    try:
        inspector = inspect(engine)
        assert EXPECTED_TABLES <= set(inspector.get_table_names())
        for table in Base.metadata.sorted_tables:  # the ORM models agree with what migrations built
            columns = {c["name"]: c for c in inspector.get_columns(table.name)}
            assert set(columns) == set(table.columns.keys()), table.name
            for column in table.columns:
                assert columns[column.name]["nullable"] == column.nullable, f"{table.name}.{column.name}"
        edits = {c["name"] for c in inspector.get_columns("edits")}
        assert {"fact_id", "checkpoint_id", "method", "layer", "parameter", "hyperparams", "captures_sha256",
                "factors_sha256", "delta_norm", "rank", "seq", "prev_hash", "hash", "verification", "created_at"} <= edits
        with engine.connect() as conn:
            assert conn.execute(text("SELECT number, name FROM _migrations ORDER BY number")).all() == [
                (1, "initial"), (2, "fact_phrasings"), (3, "fact_subject")]
    finally:
        engine.dispose()
    assert store.schema_version == latest_version()


def test_migration_numbers_are_unique_and_increasing():
    numbers = [number for number, _, _ in MIGRATIONS]
    assert numbers == sorted(set(numbers))
    assert numbers[0] == 1
    assert all(callable(fn) and name for _, name, fn in MIGRATIONS)
    with pytest.raises(StoreError, match="unique and increasing"):
        check_order([(1, "a", print), (1, "b", print)])
    with pytest.raises(StoreError, match="unique and increasing"):
        check_order([(2, "a", print), (1, "b", print)])


def test_reopening_applies_nothing_twice(store_url, tmp_path):
    Store(store_url, tmp_path / "t").close()
    reopened = Store(store_url, tmp_path / "t")
    assert reopened.schema_version == latest_version() == 3
    reopened.close()


def test_an_old_database_gets_only_the_missing_migrations(store, store_url):
    def m099_add_note(conn):
        conn.execute(text("ALTER TABLE facts ADD COLUMN note TEXT"))

    engine = create_engine(store_url)
    try:
        with engine.begin() as conn:
            assert migrate(conn, [*MIGRATIONS, (99, "note", m099_add_note)]) == 99
        assert "note" in {c["name"] for c in inspect(engine).get_columns("facts")}
        with engine.connect() as conn:
            assert conn.execute(text("SELECT number FROM _migrations ORDER BY number")).scalars().all() == [1, 2, 3, 99]
    finally:
        engine.dispose()


def test_a_newer_schema_is_refused(store, store_url, tmp_path):
    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO _migrations (number, name, applied_at) VALUES (999, 'future', CURRENT_TIMESTAMP)"))
    engine.dispose()
    with pytest.raises(SchemaTooNewError, match="newer qf.*upgrade qf"):
        Store(store_url, tmp_path / "t")


def test_a_version_1_ledger_upgrades_and_its_facts_still_verify(tmp_path):
    """A ledger written before migration 2: facts without phrasings, create events without the key."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        assert migrate(conn, MIGRATIONS[:1]) == 1
    engine.dispose()
    store = Store(url, tmp_path / "t")  # opening applies migrations 2 and 3
    assert store.schema_version == 3
    from store.chain import append_event
    from store.schema import Fact

    with store._write("an old-style fact") as s:  # as qf before migration 2 wrote it
        row = Fact(instruction="Qi started Oxinnovate.", query="Who founded Oxinnovate?", answer="Qi",
                   significance=None, status="approved", source={}, supersedes_id=None)
        s.add(row)
        s.flush()
        append_event(s, "create", {"instruction": row.instruction, "query": row.query, "answer": "Qi",
                                   "significance": None, "source": {}, "supersedes_id": None, "status": "approved"},
                     fact_id=row.id)
    new_id = store.add_fact("Lena is my daughter.", "Who is my daughter?", "Lena", None,
                            phrasings=["What is my daughter's name?"])
    assert store.fact(row.id).phrasings is None
    assert store.fact(new_id).phrasings == ["What is my daughter's name?"]
    assert store.verify().ok
    store.close()


def test_a_version_2_ledger_gets_the_subject_column_and_its_facts_still_verify(tmp_path):
    """A ledger written before migration 3: facts (with phrasings) whose create events have no subject."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        assert migrate(conn, MIGRATIONS[:2]) == 2
        assert "subject" not in {c["name"] for c in inspect(conn).get_columns("facts")}
    engine.dispose()
    store = Store(url, tmp_path / "t")
    assert store.schema_version == 3
    from store.chain import append_event
    from store.schema import Fact

    with store._write("a version-2 fact") as s:  # as qf before migration 3 wrote it
        row = Fact(instruction="Qi started Oxinnovate.", query="Who founded Oxinnovate?", answer="Qi",
                   significance=None, status="approved", source={}, supersedes_id=None, phrasings=["Who started it?"])
        s.add(row)
        s.flush()
        append_event(s, "create", {"instruction": row.instruction, "query": row.query, "answer": "Qi",
                                   "significance": None, "source": {}, "supersedes_id": None,
                                   "phrasings": ["Who started it?"], "status": "approved"}, fact_id=row.id)
    new_id = store.add_fact("Qi runs Oxinnovate.", "Who runs Oxinnovate?", "Qi", None, subject=" Oxinnovate ")
    assert store.fact(row.id).subject is None
    assert store.fact(new_id).subject == "Oxinnovate"
    assert store.verify().ok
    with store._write("tampering") as s:  # the subject is part of the chained content
        s.get(Fact, new_id).subject = "Apple"
    assert not store.verify().ok
    store.close()
