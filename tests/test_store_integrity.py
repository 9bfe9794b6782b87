"""Tensors at rest and the hash chain: round trips, and tampering that verify and loads must catch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pg_url import checkpoint, consolidate, store, store_url  # noqa: F401  (pytest fixtures)
from sqlalchemy import create_engine, text

from store import TensorIntegrityError
from store.tensors import INLINE_LIMIT, encode


def raw_sql(url: str, statement: str, **params) -> None:
    """Change the database behind the store's back, as an attacker or a broken tool would."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(statement), params)
    engine.dispose()


def blob_file(store, sha: str) -> Path:
    return store.tensors.root / store.tensors.relative_path(sha)


@pytest.mark.parametrize("big", [False, True], ids=["inline", "file"])
def test_tensor_round_trip(store, big):
    cp = checkpoint(store)
    captures = {"U": torch.randn(16, 3), "bf16": torch.randn(4, 5).to(torch.bfloat16), "targets": torch.arange(3)}
    rows = 5000 if big else 4
    factors = {"left": torch.randn(rows, 3), "right": torch.randn(3, rows)[:, ::1]}
    _, edit_id = store.record_consolidation(
        checkpoint_id=cp, fact_id=None, fact={"instruction": "i", "query": "q", "answer": "a"}, method="qf", layer=1,
        parameter="p", hyperparams={}, captures=captures, factors=factors, delta_norm=1.0, rank=3)
    loaded_captures, loaded_factors = store.load_captures(edit_id), store.load_factors(edit_id)
    assert set(loaded_captures) == set(captures) and set(loaded_factors) == set(factors)
    for name, tensor in {**captures, **factors}.items():
        got = {**loaded_captures, **loaded_factors}[name]
        assert got.dtype == tensor.dtype and torch.equal(got, tensor)
    edit = store.edits_of_fact(1)[0]
    assert blob_file(store, edit.factors_sha256).is_file() == big
    assert not blob_file(store, edit.captures_sha256).exists()  # small: inline in the database
    assert store.verify().ok


def test_identical_tensors_are_stored_once(store):
    cp = checkpoint(store)
    consolidate(store, cp, seed=5, big=True)
    consolidate(store, cp, seed=5, big=True, instruction="another fact, same tensors")
    a, b = store.edits_of_fact(1)[0], store.edits_of_fact(2)[0]
    assert a.factors_sha256 == b.factors_sha256
    assert len(list(store.tensors.root.rglob("*.safetensors"))) == 1
    assert store.verify().ok


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "delete"])
def test_a_damaged_tensor_file_is_detected_and_never_used(store, damage):
    cp = checkpoint(store)
    consolidate(store, cp, seed=0)
    _, edit_id = consolidate(store, cp, seed=1, big=True)
    path = blob_file(store, store.edits_of_fact(2)[0].factors_sha256)
    data = path.read_bytes()
    assert len(data) > INLINE_LIMIT
    if damage == "corrupt":
        path.write_bytes(data[:-10] + bytes(b ^ 0xFF for b in data[-10:]))
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()
    expected = "is missing" if damage == "delete" else "modified or truncated"
    with pytest.raises(TensorIntegrityError, match=expected):
        store.load_factors(edit_id)
    assert store.load_captures(edit_id)  # the inline captures are intact
    report = store.verify()
    assert not report.ok and f"factors of edit #{edit_id}" in report.first_mismatch and expected in report.first_mismatch
    # recording the same tensors again heals the file (content addressed)
    if damage == "delete":
        consolidate(store, cp, seed=1, big=True, instruction="again")
        assert store.verify().ok


def test_a_tampered_inline_blob_is_detected(store, store_url):
    cp = checkpoint(store)
    _, edit_id = consolidate(store, cp)
    sha = store.edits_of_fact(1)[0].captures_sha256
    forged = encode({name: t + 1 for name, t in store.load_captures(edit_id).items()})  # valid bytes, other values
    raw_sql(store_url, "UPDATE tensor_blobs SET data = :data WHERE sha256 = :sha", data=forged, sha=sha)
    with pytest.raises(TensorIntegrityError, match=f"captures of edit #{edit_id}"):
        store.load_captures(edit_id)
    report = store.verify()
    assert not report.ok and f"captures of edit #{edit_id}" in report.first_mismatch


def test_verify_is_ok_on_a_clean_ledger_with_awkward_values(store):
    """Floats, unicode and nested JSON must hash identically after the database round trip."""
    cp = store.get_or_create_checkpoint("münchen/ü", "e" * 64, {"p": "0" * 64}, "bfloat16", meta={"x": [0.1, 1e-300]})
    store.record_consolidation(
        checkpoint_id=cp, fact_id=None, method="qf", layer=0, parameter="p", delta_norm=(0.1 + 0.2) * 1e10, rank=1,
        fact={"instruction": "Zoë’s café — 東京", "query": "q\n\"quoted\"", "answer": "ÿ", "significance": [1 / 3, 2e-308, 7],
              "source": {"nested": {"b": [1, 2.5], "a": None}}},
        hyperparams={"ridge": 1e-6, "z": 1 / 3, "t": (1, 2), "flag": True}, captures={"u": torch.ones(1)}, factors={"f": torch.ones(1)})
    report = store.verify()
    assert report.ok, report.first_mismatch
    assert store.edits_of_fact(1)[0].hyperparams["t"] == [1, 2]


@pytest.mark.parametrize("statement, culprit", [
    ("UPDATE edits SET delta_norm = delta_norm * 2 WHERE id = 2", "edit #2"),
    ("UPDATE edits SET layer = 7 WHERE id = 1", "edit #1"),
    ("UPDATE edits SET factors_sha256 = captures_sha256 WHERE id = 2", "edit #2"),
    ("UPDATE events SET payload = '{\"from\": \"x\", \"to\": \"y\"}' WHERE kind = 'undo'", "'undo'"),
    ("UPDATE facts SET answer = 'forged' WHERE id = 1", "fact #1: answer"),
    ("UPDATE facts SET status = 'consolidated' WHERE id = 2", "fact #2: status"),
    ("UPDATE checkpoints SET parameters = '{}' WHERE id = 1", "checkpoint #1"),
    ("DELETE FROM events WHERE kind = 'undo'", "chain head"),
    ("DELETE FROM events WHERE kind = 'create' AND fact_id = 2", "expected sequence number"),
])
def test_the_chain_detects_an_edited_row(store, store_url, statement, culprit):
    cp = checkpoint(store)
    consolidate(store, cp, seed=0)
    consolidate(store, cp, seed=1)
    store.undo(2)
    store.set_verification(1, "free text, not hashed")
    assert store.verify().ok
    raw_sql(store_url, statement)
    report = store.verify()
    assert not report.ok
    assert culprit in report.first_mismatch, report.first_mismatch


def test_head_changes_with_every_chained_event(store):
    heads = {store.head()}
    cp = checkpoint(store)
    heads.add(store.head())
    fact_id, _ = consolidate(store, cp)
    heads.add(store.head())
    store.undo(fact_id)
    heads.add(store.head())
    store.redo(fact_id)
    heads.add(store.head())
    assert len(heads) == 5
    assert store.verify().checked >= 7  # links + tensor blobs
