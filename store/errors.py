"""The ledger's exceptions: every one says what went wrong and what to do next.

They derive from ``RuntimeError`` / ``ValueError`` / ``LookupError`` as well as ``StoreError`` so
that callers who only know the builtin families still treat them as user errors.
"""

from __future__ import annotations


class StoreError(RuntimeError):
    """Any failure of the ledger (locked database, full disk, inconsistent base, ...)."""


class SchemaTooNewError(StoreError):
    """The database was migrated by a newer version of qf than this one."""


class TensorIntegrityError(StoreError):
    """A stored tensor blob is missing or does not hash to the sha256 its row records."""


class InvalidTransitionError(StoreError, ValueError):
    """A fact status change that the fact's life cycle does not allow."""


class NotFoundError(StoreError, LookupError):
    """A row that was asked for by id does not exist."""


class FactNotFoundError(NotFoundError):
    """No fact with that id."""


class EditNotFoundError(NotFoundError):
    """No edit with that id."""


class CheckpointNotFoundError(NotFoundError):
    """No checkpoint with that id."""


class SessionNotFoundError(NotFoundError):
    """No chat session with that id."""


class CheckpointMismatchError(StoreError):
    """A checkpoint's base parameter changed since the ledger first recorded it."""
