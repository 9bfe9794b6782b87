"""Backends for the store tests: SQLite in tmp_path, and PostgreSQL when QF_TEST_PG_URL is set.

Import the fixtures into a test module (``from pg_url import store, store_url``) to run its
tests on both. Each PostgreSQL test gets a fresh schema (via ``search_path``) that is dropped
afterwards, so runs are independent and may share one database.
"""

from __future__ import annotations

import os
import uuid

import pytest
import torch
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from store import Store

PG_ENV = "QF_TEST_PG_URL"
SKIP_REASON = (
    f"{PG_ENV} is not set: no PostgreSQL server to test against "
    "(e.g. QF_TEST_PG_URL=postgresql+psycopg://qf:qf@127.0.0.1:5432/qf_test)"
)

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def pg_schema_url(base: str, schema: str) -> str:
    """``base`` with its connections' search_path set to ``schema``."""
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path):
    """A database URL for an empty ledger: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'qf.db'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(SKIP_REASON)
    schema = f"qf_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield pg_schema_url(base, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def store(store_url, tmp_path):
    """An open ``Store`` on ``store_url`` with tensors under tmp_path; closed afterwards."""
    opened = Store(store_url, tmp_path / "tensors")
    yield opened
    opened.close()


def consolidate(store: Store, checkpoint_id: int, seed: int = 0, *, fact_id: int | None = None, big: bool = False,
                method: str = "qf", **fact_fields) -> tuple[int, int]:
    """Record one consolidation with random tensors (file-backed factors when ``big``)."""
    gen = torch.Generator().manual_seed(seed)
    rows = 5000 if big else 8  # 5000 x 3 x 2 float32 = 120 kB: over the inline limit
    fact = None if fact_id is not None else {
        "instruction": f"instruction {seed}", "query": f"query {seed}", "answer": f"answer {seed}",
        "significance": [1.0, 0.5], "source": {"test": seed}, **fact_fields,
    }
    return store.record_consolidation(
        checkpoint_id=checkpoint_id, fact_id=fact_id, fact=fact, method=method, layer=2, parameter="model.layers.2.mlp.down_proj.weight",
        hyperparams={"ridge": 1e-6, "rows": 3}, captures={"U": torch.randn(16, 3, generator=gen), "targets": torch.arange(3)},
        factors={"left": torch.randn(rows, 3, generator=gen), "right": torch.randn(3, rows, generator=gen)},
        delta_norm=0.1 + 0.2 + seed, rank=3,
    )


def checkpoint(store: Store, name: str = "tiny") -> int:
    return store.get_or_create_checkpoint(name, "c" * 64, {"model.layers.2.mlp.down_proj.weight": "b" * 64}, "float32")
