"""Replay: re-consolidate every active fact, in ledger order, onto another checkpoint.

The captures are recomputed on the target (its own forward passes), so a fact log can be carried
to a new checkpoint of the same family or another model. Each replayed fact becomes a new edit of
the same ledger fact on the target's checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from agent.ledger_editor import LedgerEditor
from memory import architecture as arch
from memory.consolidate import ConsolidationError
from memory.fact import Fact

log = logging.getLogger(__name__)


@dataclass
class Replayed:
    fact_id: int
    query: str
    answer: str | None
    status: str  # replayed | present | would-replay | failed
    layer: int | None = None
    verification: str = ""
    seconds: float = 0.0
    error: str = ""


class ReplayRefused(ValueError):
    pass


def mapped_layer(source_layer: int, source_layers: int | None, target_layers: int) -> int:
    """The same relative depth on the target (the last layer maps to the last layer); the layer
    as is when the depths match or the source depth is unknown."""
    if not source_layers or source_layers == target_layers or source_layers < 2:
        return source_layer
    return round(source_layer * (target_layers - 1) / (source_layers - 1))


def plan_layers(target: LedgerEditor, layer: int | None) -> dict[int, tuple[str, int]]:
    """fact id -> (method, layer) on the target. The method is the fact's first edit's. QF: the
    layer is ``layer`` if given, else the first edit's layer at the same relative depth (the
    target's default layer for a fact never consolidated). QF2: the target's converted layer."""
    store, n = target.store, arch.num_layers(target.loaded.model)
    plan = {}
    for fact in store.facts(status="consolidated"):
        edits = store.edits_of_fact(fact.id)
        method = edits[0].method if edits else "qf"
        if method == "qf2":
            if target.qf2 is None:
                raise ReplayRefused(f"fact #{fact.id} was learned with QF2, but {target.loaded.name} is not converted "
                                    "for QF2 (qf convert)")
            plan[fact.id] = (method, target.qf2.layer)
            continue
        if layer is not None:
            chosen = layer
        elif edits:
            chosen = mapped_layer(edits[0].layer, edits[0].hyperparams.get("model_layers"), n)
        else:
            chosen = arch.default_layer(target.loaded.model)
        if not 0 <= chosen < n:
            raise ReplayRefused(
                f"fact #{fact.id} was learned at layer {chosen}, but {target.loaded.name} has layers 0..{n - 1}; "
                f"pass --layer N to choose the layer on the target"
            )
        plan[fact.id] = (method, chosen)
    return plan


def replay(target: LedgerEditor, layer: int | None = None, dry_run: bool = False,
           progress: Callable[[Replayed], None] | None = None) -> list[Replayed]:
    """Consolidate onto ``target`` every active fact it does not already hold."""
    store = target.store
    plan = plan_layers(target, layer)
    present = {e.fact_id for e in store.active_edits(target.checkpoint_id)}
    results = []
    for fact in store.facts(status="consolidated"):
        method, fact_layer = plan[fact.id]
        item = Replayed(fact.id, fact.query, fact.answer, "present", fact_layer)
        if fact.id not in present:
            item.status = "would-replay"
            if not dry_run:
                item = _replay_one(target, fact, method, fact_layer)
        results.append(item)
        if progress:
            progress(item)
    return results


def _replay_one(target: LedgerEditor, fact, method: str, layer: int) -> Replayed:
    significance = tuple(fact.significance) if fact.significance else None
    try:
        learned = target.learn(Fact(fact.instruction, fact.query, fact.answer, significance, fact.phrasings or (),
                                    fact.subject),
                               fact_id=fact.id, layer=None if method == "qf2" else layer, method=method)
    except (ConsolidationError, ValueError) as exc:
        log.warning("replay of fact #%d failed: %s", fact.id, exc)
        return Replayed(fact.id, fact.query, fact.answer, "failed", layer, error=str(exc))
    result = learned.result
    return Replayed(fact.id, fact.query, fact.answer, "replayed", layer, result.verification, result.seconds)
