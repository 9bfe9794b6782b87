"""The Store API: facts and their life cycle, edits, checkpoints, chat sessions; SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from pg_url import checkpoint, consolidate, store, store_url  # noqa: F401  (pytest fixtures)

from store import (
    EditRecord, FactNotFoundError, FactRecord, InvalidTransitionError, Store, StoreError,
)
from store.errors import CheckpointMismatchError, CheckpointNotFoundError, EditNotFoundError, SessionNotFoundError

PARAM = "model.layers.2.mlp.down_proj.weight"


def test_store_imports_nothing_from_the_other_packages():
    code = ("import sys, store; bad = sorted({m.split('.')[0] for m in sys.modules} & {'memory', 'agent', 'cli', 'bench'});"
            "sys.exit(str(bad) if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


def test_errors_belong_to_the_builtin_families_the_cli_reports():
    assert issubclass(StoreError, RuntimeError)
    assert issubclass(InvalidTransitionError, ValueError)
    assert issubclass(FactNotFoundError, LookupError) and issubclass(FactNotFoundError, StoreError)


def test_add_fact_and_read_it_back(store):
    fact_id = store.add_fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi.", [1, 0.25],
                             source={"session": 1, "message": 7})
    fact = store.fact(fact_id)
    assert isinstance(fact, FactRecord)
    assert (fact.instruction, fact.query, fact.answer, fact.status) == ("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi.", "pending")
    assert fact.significance == [1.0, 0.25] and fact.source == {"session": 1, "message": 7}
    assert fact.approved_at is None and fact.supersedes_id is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        fact.status = "approved"
    approved = store.add_fact("i", "q", None, None, status="approved")
    assert store.fact(approved).approved_at is not None and store.fact(approved).answer is None
    assert [f.id for f in store.facts()] == [fact_id, approved]
    assert [f.id for f in store.facts(status="approved")] == [approved]


def test_add_fact_refuses_bad_input(store):
    with pytest.raises(InvalidTransitionError, match="new fact starts as"):
        store.add_fact("i", "q", "a", None, status="consolidated")
    with pytest.raises(InvalidTransitionError, match="unknown fact status"):
        store.add_fact("i", "q", "a", None, status="done")
    with pytest.raises(ValueError, match="finite"):
        store.add_fact("i", "q", "a", [float("nan")])
    with pytest.raises(FactNotFoundError):
        store.add_fact("i", "q", "a", None, supersedes_id=42)
    assert store.facts() == []


def test_status_transitions_are_validated_and_chained(store):
    fact_id = store.add_fact("i", "q", "a", None)
    head = store.head()
    store.set_fact_status(fact_id, "approved")
    assert store.fact(fact_id).status == "approved" and store.fact(fact_id).approved_at is not None
    assert store.head() != head
    store.set_fact_status(fact_id, "rejected")
    with pytest.raises(InvalidTransitionError, match="rejected; it can become pending, approved, not reverted"):
        store.set_fact_status(fact_id, "reverted")
    with pytest.raises(InvalidTransitionError, match="already rejected"):
        store.set_fact_status(fact_id, "rejected")
    store.set_fact_status(fact_id, "approved")
    with pytest.raises(InvalidTransitionError, match="approved; it can become pending, rejected, not consolidated"):
        store.set_fact_status(fact_id, "consolidated")
    with pytest.raises(FactNotFoundError, match="no fact #99"):
        store.set_fact_status(99, "approved")


def test_undo_and_redo(store):
    cp = checkpoint(store)
    fact_id, edit_id = consolidate(store, cp)
    assert store.fact(fact_id).status == "consolidated"
    store.undo(fact_id)
    assert store.fact(fact_id).status == "reverted"
    assert store.active_edits(cp) == []
    with pytest.raises(InvalidTransitionError, match="is reverted, not consolidated; only consolidated facts can be undone"):
        store.undo(fact_id)
    store.redo(fact_id)
    assert store.fact(fact_id).status == "consolidated"
    assert [e.id for e in store.active_edits(cp)] == [edit_id]
    with pytest.raises(InvalidTransitionError, match="is consolidated, not reverted; only reverted facts can be redone"):
        store.redo(fact_id)
    pending = store.add_fact("i", "q", "a", None)
    with pytest.raises(InvalidTransitionError, match="pending, not consolidated"):
        store.undo(pending)
    with pytest.raises(FactNotFoundError, match="no fact #999"):
        store.undo(999)
    with pytest.raises(FactNotFoundError):
        store.redo(999)
    assert store.verify().ok


def test_record_consolidation_returns_a_complete_edit(store):
    cp = checkpoint(store)
    fact_id, edit_id = consolidate(store, cp, seed=3)
    (edit,) = store.edits_of_fact(fact_id)
    assert isinstance(edit, EditRecord) and edit.id == edit_id
    assert (edit.fact_id, edit.checkpoint_id, edit.method, edit.layer, edit.parameter) == (fact_id, cp, "qf", 2, PARAM)
    assert edit.hyperparams == {"ridge": 1e-6, "rows": 3} and edit.rank == 3
    assert edit.delta_norm == 0.1 + 0.2 + 3 and edit.verification is None and len(edit.hash) == 64
    fact = store.fact(fact_id)
    assert fact.answer == "answer 3" and fact.significance == [1.0, 0.5] and fact.approved_at is not None
    head = store.head()
    store.set_verification(edit_id, "answer 3")
    assert store.edits_of_fact(fact_id)[0].verification == "answer 3"
    assert store.head() == head  # the verification is not part of the chain
    with pytest.raises(EditNotFoundError):
        store.set_verification(999, "x")


def test_record_consolidation_of_existing_facts(store):
    cp, other = checkpoint(store, "a"), checkpoint(store, "b")
    pending = store.add_fact("i", "q", "a", [1.0])
    fact_id, first = consolidate(store, cp, fact_id=pending)
    assert fact_id == pending and store.fact(pending).status == "consolidated"
    _, second = consolidate(store, other, seed=1, fact_id=pending)  # replay onto another checkpoint
    assert [e.id for e in store.edits_of_fact(pending)] == [first, second]
    assert [e.id for e in store.active_edits(other)] == [second]
    rejected = store.add_fact("i", "q", "a", None, status="rejected")
    head = store.head()
    with pytest.raises(InvalidTransitionError, match="rejected; only pending, approved or consolidated"):
        consolidate(store, cp, fact_id=rejected)
    assert store.head() == head and store.edits_of_fact(rejected) == []
    with pytest.raises(ValueError, match="exactly one of"):
        store.record_consolidation(checkpoint_id=cp, fact_id=None, fact=None, method="qf", layer=1, parameter=PARAM,
                                   hyperparams={}, captures={}, factors={}, delta_norm=0.0, rank=0)
    with pytest.raises(CheckpointNotFoundError):
        consolidate(store, 999)
    with pytest.raises(FactNotFoundError):
        consolidate(store, cp, fact_id=999)


def test_active_edits_follow_the_sequence_and_the_status(store):
    cp, other = checkpoint(store, "a"), checkpoint(store, "b")
    ids = [consolidate(store, cp, seed=i) for i in range(4)]
    consolidate(store, other, seed=9)
    consolidate(store, cp, seed=10, method="qf2")
    store.undo(ids[1][0])
    store.add_fact("noise", "q", "a", None)
    active = store.active_edits(cp, method="qf")
    assert [e.id for e in active] == [ids[0][1], ids[2][1], ids[3][1]]
    assert [e.seq for e in active] == sorted(e.seq for e in active)
    store.redo(ids[1][0])
    assert [e.id for e in store.active_edits(cp, method="qf")] == [edit for _, edit in ids]
    assert len(store.active_edits(cp)) == 5 and len(store.active_edits(other)) == 1
    with pytest.raises(CheckpointNotFoundError):
        store.active_edits(999)


def test_a_new_fact_supersedes_the_old_one_in_the_same_transaction(store):
    cp = checkpoint(store)
    old, old_edit = consolidate(store, cp, seed=0)
    new, new_edit = consolidate(store, cp, seed=1, supersedes_id=old)
    assert store.fact(old).status == "superseded"
    assert store.fact(new).supersedes_id == old
    assert [e.id for e in store.active_edits(cp)] == [new_edit]
    assert store.verify().ok


def test_checkpoints_are_identified_by_name_and_config(store):
    cp = store.get_or_create_checkpoint("tiny", "c" * 64, {"p1": "1" * 64}, "float32", meta={"layers": 4})
    assert store.get_or_create_checkpoint("tiny", "c" * 64, {"p1": "1" * 64}, "float32") == cp
    assert store.get_or_create_checkpoint("tiny", "d" * 64, {"p1": "1" * 64}, "float32") != cp
    assert store.get_or_create_checkpoint("tiny", "c" * 64, {"p2": "2" * 64}, "float32") == cp
    info = store.checkpoint(cp)
    assert info["parameters"] == {"p1": "1" * 64, "p2": "2" * 64} and info["meta"] == {"layers": 4}
    with pytest.raises(CheckpointMismatchError, match="p1.*differs"):
        store.get_or_create_checkpoint("tiny", "c" * 64, {"p1": "9" * 64}, "float32")
    assert [c["id"] for c in store.checkpoints()] == [cp, cp + 1]
    with pytest.raises(CheckpointNotFoundError):
        store.checkpoint(999)
    assert store.verify().ok


def test_chat_sessions_and_messages(store):
    first = store.create_session("morning")
    second = store.create_session()
    m1 = store.add_message(first, "user", "My daughter's name is Lena.")
    m2 = store.add_message(first, "assistant", "Noted.")
    assert m2 > m1
    assert [(m["role"], m["content"]) for m in store.messages(first)] == [("user", "My daughter's name is Lena."), ("assistant", "Noted.")]
    assert store.messages(second) == []
    assert [(s["id"], s["title"], s["messages"]) for s in store.sessions()] == [(first, "morning", 2), (second, None, 0)]
    with pytest.raises(SessionNotFoundError):
        store.messages(999)
    with pytest.raises(SessionNotFoundError):
        store.add_message(999, "user", "x")


def test_the_ledger_persists_across_opens(store_url, tmp_path):
    with Store(store_url, tmp_path / "t") as first:
        cp = checkpoint(first)
        fact_id, edit_id = consolidate(first, cp, big=True)
        head = first.head()
    with Store(store_url, tmp_path / "t") as second:
        assert second.head() == head
        assert second.fact(fact_id).status == "consolidated"
        assert torch.equal(second.load_captures(edit_id)["targets"], torch.arange(3))
        assert second.verify().ok


def test_sqlite_pragmas_and_plain_paths(tmp_path):
    path = tmp_path / "sub" / "qf.db"  # the directory is created
    with Store(str(path), tmp_path / "t") as ledger:
        with ledger._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert ledger.url == f"sqlite:///{path}"


def test_urls_are_normalized():
    from store.engine import normalize_url

    assert normalize_url("postgresql://u:p@127.0.0.1/db") == "postgresql+psycopg://u:p@127.0.0.1/db"
    assert normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("/tmp/x.db") == "sqlite:////tmp/x.db"
    with pytest.raises(StoreError, match="unsupported ledger database"):
        Store("mysql://u@127.0.0.1/db", "/tmp/unused")
