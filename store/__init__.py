"""The fact ledger (SQLAlchemy 2): facts, edits, checkpoints, sessions; hash chained.

``Store(url, tensor_dir)`` owns the database: SQLite by default (WAL, foreign keys, busy
timeout), PostgreSQL with a ``postgresql+psycopg://`` URL. Tensors at rest are safetensors,
inline when small and content-addressed files when large. This package never imports
``memory``, ``agent``, ``cli`` or ``bench``.
"""

from store.errors import (
    CheckpointMismatchError, CheckpointNotFoundError, EditNotFoundError, FactNotFoundError, InvalidTransitionError,
    NotFoundError, SchemaTooNewError, SessionNotFoundError, StoreError, TensorIntegrityError,
)
from store.ledger import Store
from store.lifecycle import STATUSES
from store.records import EditRecord, FactRecord, VerifyReport

__all__ = [
    "Store", "FactRecord", "EditRecord", "VerifyReport", "STATUSES",
    "StoreError", "TensorIntegrityError", "SchemaTooNewError", "FactNotFoundError", "InvalidTransitionError",
    "NotFoundError", "EditNotFoundError", "CheckpointNotFoundError", "SessionNotFoundError", "CheckpointMismatchError",
]
