"""Checkpoints: the base model identities that edits are valid against."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.chain import append_event
from store.errors import CheckpointMismatchError, CheckpointNotFoundError
from store.hashing import normalize_json, utcnow
from store.schema import Checkpoint

log = logging.getLogger(__name__)


def require(session: Session, checkpoint_id: int) -> Checkpoint:
    row = session.get(Checkpoint, checkpoint_id)
    if row is None:
        raise CheckpointNotFoundError(
            f"no checkpoint #{checkpoint_id} in the ledger; load the model through the store first"
        )
    return row


def _check_parameters(parameters: dict[str, str]) -> dict[str, str]:
    if not isinstance(parameters, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parameters.items()
    ):
        raise ValueError("parameters must map parameter name -> sha256 hex string of its base value")
    return dict(parameters)


def get_or_create(
    session: Session, name: str, config_sha256: str, parameters: dict[str, str], dtype: str, meta: dict | None,
) -> int:
    """The id of checkpoint (name, config_sha256), created if new; new parameter names are added.

    A parameter whose base sha256 differs from the recorded one means the base weights changed
    under the ledger: ``CheckpointMismatchError``. Runs inside a chain-locked write transaction."""
    parameters = _check_parameters(parameters)
    row = session.scalars(
        select(Checkpoint).where(Checkpoint.name == name, Checkpoint.config_sha256 == config_sha256)
    ).one_or_none()
    if row is None:
        row = Checkpoint(name=name, config_sha256=config_sha256, parameters=parameters, dtype=dtype,
                         meta=normalize_json(meta or {}), created_at=utcnow())
        session.add(row)
        session.flush()
        append_event(session, "checkpoint", {"name": name, "config_sha256": config_sha256, "parameters": parameters,
                                             "dtype": dtype, "meta": row.meta}, checkpoint_id=row.id)
        log.info("new checkpoint #%d: %s (%s)", row.id, name, dtype)
        return row.id
    changed = sorted(p for p in parameters.keys() & row.parameters.keys() if parameters[p] != row.parameters[p])
    if changed:
        raise CheckpointMismatchError(
            f"the base value of {', '.join(changed)} in checkpoint #{row.id} ({name}) differs from the one the ledger "
            "recorded: the model files changed, so its edits no longer apply. Load the original weights, or use "
            "another ledger (--db) and replay the facts onto this model"
        )
    added = {p: parameters[p] for p in sorted(parameters.keys() - row.parameters.keys())}
    if added:
        row.parameters = {**row.parameters, **added}  # a new dict: JSON columns do not track in-place changes
        append_event(session, "checkpoint_parameters", {"added": added}, checkpoint_id=row.id)
    if dtype != row.dtype:
        log.info("checkpoint #%d was recorded as %s, now loaded as %s", row.id, row.dtype, dtype)
    return row.id


def parameters_from_events(payloads: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Replay a checkpoint's events into its expected row fields (for ``verify``)."""
    state: dict[str, Any] = {}
    for kind, payload in payloads:
        if kind == "checkpoint":
            state = {k: payload[k] for k in ("name", "config_sha256", "parameters", "dtype", "meta")}
        elif kind == "checkpoint_parameters" and state:
            state["parameters"] = {**state["parameters"], **payload["added"]}
    return state
