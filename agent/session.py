"""Opening the ledger and the model together, as every ledger-backed command does."""

from __future__ import annotations

import os
from pathlib import Path

from memory.answering import with_qf2_settings
from memory.consolidate import EditorConfig
from memory.loading import load_model
from memory.paths import data_dir
from store import Store

from agent.ledger_editor import LedgerEditor


def ledger_url(db: str | None = None) -> str:
    """--db, else $QF_DB_URL, else SQLite at $QF_HOME/qf.db."""
    return db or os.environ.get("QF_DB_URL") or f"sqlite:///{data_dir() / 'qf.db'}"


def open_store(db: str | None = None) -> Store:
    return Store(ledger_url(db), Path(data_dir()) / "tensors")


def open_ledger(
    db: str | None = None, model: str | None = None, device: str = "auto", dtype: str = "auto",
    layer: int | None = None, system: str | None = None, store: Store | None = None, lr: float | None = None,
    solver: dict | None = None, progress=None, qf2_rule: str | None = None,
) -> LedgerEditor:
    """Load the model once and rebuild its weights from the ledger's active facts.

    ``solver``: QF solver settings (EditorConfig fields: preserve, auto_significance) over the defaults;
    ``lr`` and ``qf2_rule``: QF2's, over its defaults."""
    store = store or open_store(db)
    loaded = load_model(model, device=device, dtype=dtype)
    config = EditorConfig(layer=layer, system=system, **(solver or {}))
    return LedgerEditor(store, loaded, with_qf2_settings(config, lr, qf2_rule), progress=progress)
