"""Concurrent writers lose nothing; a locked database, a full disk or any error mid-write leave no trace."""

from __future__ import annotations

import errno
import multiprocessing
import sqlite3

import pytest
from pg_url import checkpoint, consolidate, store, store_url  # noqa: F401  (pytest fixtures)
from sqlalchemy import create_engine, text

from store import Store, StoreError
from store import facts as facts_module
from store import ledger as ledger_module
from store.tensors import TensorStore

N = 10


def _write_many(url: str, tensor_dir: str, worker: int, barrier, results) -> None:
    """Child process: open the (possibly blank) ledger and record N consolidations as fast as possible."""
    try:
        barrier.wait(timeout=60)
        with Store(url, tensor_dir) as ledger:
            cp = checkpoint(ledger)
            for i in range(N):
                consolidate(ledger, cp, seed=1000 * worker + i, big=i % 3 == 0, instruction=f"worker {worker} fact {i}")
        results.put((worker, "ok"))
    except BaseException as exc:  # report to the parent instead of dying silently
        results.put((worker, repr(exc)))


def test_two_processes_writing_at_once_lose_nothing(store_url, tmp_path):
    ctx = multiprocessing.get_context("spawn")  # no inherited connections, threads or locks
    barrier, results = ctx.Barrier(2), ctx.Queue()
    tensor_dir = str(tmp_path / "tensors")
    workers = [ctx.Process(target=_write_many, args=(store_url, tensor_dir, w, barrier, results)) for w in (1, 2)]
    for p in workers:
        p.start()
    outcomes = dict(results.get(timeout=120) for _ in workers)
    for p in workers:
        p.join(timeout=60)
    assert outcomes == {1: "ok", 2: "ok"}
    with Store(store_url, tensor_dir) as ledger:
        assert len(ledger.checkpoints()) == 1
        facts = ledger.facts(status="consolidated")
        assert len(facts) == 2 * N
        assert {f.instruction for f in facts} == {f"worker {w} fact {i}" for w in (1, 2) for i in range(N)}
        edits = ledger.active_edits(ledger.checkpoints()[0]["id"])
        assert len(edits) == 2 * N and len({e.seq for e in edits}) == 2 * N
        report = ledger.verify()
        assert report.ok, report.first_mismatch


def _counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        counts = {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in ("facts", "edits", "events", "tensor_blobs")}
    engine.dispose()
    return counts


def _fail_after(monkeypatch, module, name: str) -> None:
    original = getattr(module, name)

    def failing(*args, **kwargs):
        original(*args, **kwargs)
        raise RuntimeError("injected failure")

    monkeypatch.setattr(module, name, failing)


@pytest.mark.parametrize("where", ["after the edit row", "after the status change"])
def test_an_error_inside_record_consolidation_leaves_nothing_behind(store, store_url, monkeypatch, where):
    cp = checkpoint(store)
    consolidate(store, cp, seed=0)
    before, head = _counts(store_url), store.head()
    if where == "after the edit row":
        _fail_after(monkeypatch, ledger_module, "append")
    else:
        _fail_after(monkeypatch, facts_module, "mark_consolidated")
    with pytest.raises(RuntimeError, match="injected failure"):
        consolidate(store, cp, seed=1, big=True)
    monkeypatch.undo()
    assert _counts(store_url) == before and store.head() == head
    assert store.verify().ok  # an orphan tensor file may remain: harmless, content addressed
    fact_id, _ = consolidate(store, cp, seed=1, big=True)  # the same write succeeds afterwards
    assert store.fact(fact_id).status == "consolidated"
    assert store.verify().ok


def test_a_full_disk_is_a_clear_error_and_writes_nothing(store, store_url, monkeypatch):
    cp = checkpoint(store)
    before = _counts(store_url)

    def no_space(self, sha, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(TensorStore, "_write_file", no_space)
    with pytest.raises(StoreError, match="no space left"):
        consolidate(store, cp, big=True)
    assert _counts(store_url) == before


def test_a_locked_sqlite_ledger_is_a_clear_error(tmp_path):
    path = tmp_path / "qf.db"
    with Store(f"sqlite:///{path}", tmp_path / "t", busy_timeout=0.2) as ledger:
        ledger.add_fact("i", "q", "a", None)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with pytest.raises(StoreError, match="locked by another process.*retry"):
                ledger.add_fact("i2", "q2", "a2", None)
            assert len(ledger.facts()) == 1  # readers are not blocked (WAL)
        finally:
            other.execute("ROLLBACK")
            other.close()
        ledger.add_fact("i2", "q2", "a2", None)
        assert len(ledger.facts()) == 2 and ledger.verify().ok
