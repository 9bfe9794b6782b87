"""Integrity check: recompute the hash chain, re-derive facts and checkpoints, rehash every tensor.

Problems are reported by the row they concern ("edit #4 (seq 9): ..."), so a person can find what
was tampered with, truncated or lost.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store import checkpoints, facts
from store.chain import content_of
from store.errors import TensorIntegrityError
from store.hashing import GENESIS, link_hash, normalize_json
from store.records import VerifyReport
from store.schema import ChainHead, Checkpoint, Edit, Event, Fact, TensorBlob
from store.tensors import TensorStore

log = logging.getLogger(__name__)


def _label(link: Edit | Event) -> str:
    if isinstance(link, Edit):
        return f"edit #{link.id} (seq {link.seq})"
    return f"event #{link.id} '{link.kind}' (seq {link.seq})"


def check_chain(session: Session) -> tuple[list[str], int, list[Edit | Event]]:
    """Problems in the chain's order and hashes; the number of links; the links in order."""
    links: list[Edit | Event] = [*session.scalars(select(Edit)), *session.scalars(select(Event))]
    links.sort(key=lambda link: link.seq)
    prev = GENESIS
    for expected_seq, link in enumerate(links, start=1):
        problem = None
        if link.seq != expected_seq:
            problem = f"expected sequence number {expected_seq}; a link is missing or was renumbered"
        elif link.prev_hash != prev:
            problem = f"prev_hash does not match the hash of seq {expected_seq - 1}"
        elif link_hash(link.prev_hash, content_of(link)) != link.hash:
            problem = "hash mismatch; the row was changed after it was recorded"
        if problem:
            return [f"{_label(link)}: {problem}"], expected_seq, links
        prev = link.hash
    problems = []
    head = session.get(ChainHead, 1)
    if head is None or (head.seq, head.hash) != (len(links), prev):
        problems.append(f"chain head says seq {head.seq if head else None} but the last link is seq {len(links)}; "
                        "links were deleted or the head was changed")
    return problems, len(links), links


def check_state(session: Session, links: list[Edit | Event]) -> list[str]:
    """Facts and checkpoints must equal what their events say."""
    by_fact: dict[int, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    by_checkpoint: dict[int, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for link in links:
        if isinstance(link, Event) and link.fact_id is not None:
            by_fact[link.fact_id].append((link.kind, link.payload))
        if isinstance(link, Event) and link.kind.startswith("checkpoint"):
            by_checkpoint[link.checkpoint_id].append((link.kind, link.payload))
    problems = []
    for row in session.scalars(select(Fact).order_by(Fact.id)):
        actual = normalize_json({k: getattr(row, k) for k in (*facts.CONTENT_FIELDS, "status")})
        expected = facts.expected_state(by_fact.get(row.id, []))
        if actual != expected:
            fields = sorted(k for k in actual if actual.get(k) != expected.get(k))
            problems.append(f"fact #{row.id}: {', '.join(fields)} differ from what the ledger's events recorded")
    for row in session.scalars(select(Checkpoint).order_by(Checkpoint.id)):
        actual = normalize_json({k: getattr(row, k) for k in ("name", "config_sha256", "parameters", "dtype", "meta")})
        if actual != checkpoints.parameters_from_events(by_checkpoint.get(row.id, [])):
            problems.append(f"checkpoint #{row.id}: differs from what the ledger's events recorded")
    return problems


def check_tensors(session: Session, tensors: TensorStore) -> tuple[list[str], int]:
    """Rehash every tensor blob (inline and files); name the edits that use a bad one."""
    users: dict[str, list[str]] = defaultdict(list)
    for edit in session.scalars(select(Edit).order_by(Edit.seq)):
        users[edit.captures_sha256].append(f"captures of edit #{edit.id}")
        users[edit.factors_sha256].append(f"factors of edit #{edit.id}")
    problems, checked = [], 0
    for blob in session.scalars(select(TensorBlob).order_by(TensorBlob.created_at, TensorBlob.sha256)):
        checked += 1
        try:
            tensors.read_bytes(blob, ", ".join(users.get(blob.sha256, [])) or "unused")
        except TensorIntegrityError as exc:
            problems.append(str(exc))
    return problems, checked


def verify(session: Session, tensors: TensorStore) -> VerifyReport:
    """The whole check; ``first_mismatch`` is the first problem found (chain, then state, then tensors)."""
    problems, checked, links = check_chain(session)
    if not problems:
        problems += check_state(session, links)
    tensor_problems, blobs = check_tensors(session, tensors)
    problems += tensor_problems
    for problem in problems:
        log.warning("ledger verify: %s", problem)
    return VerifyReport(ok=not problems, checked=checked + blobs, first_mismatch=problems[0] if problems else None)
