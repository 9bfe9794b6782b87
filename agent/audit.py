"""Audit: which facts changed which weights, from the factors stored with each edit.

Each edit stores its fact's share of the joint delta at the time it was recorded
(left[:, rows_f] @ right[rows_f]); the shares of all active facts sum to the live dW.
"""

from __future__ import annotations

from memory.audit import col_norms, cosine, row_norms, top_k
from memory.delta import LowRankDelta
from store import Store


def edit_delta(store: Store, edit) -> LowRankDelta:
    factors = store.load_factors(edit.id)
    return LowRankDelta(factors["left"], factors["right"], edit.parameter, "", layer=edit.layer)


def fact_report(store: Store, fact_id: int, k: int = 10) -> dict:
    """Top-k output rows and input columns of each of the fact's edits, by norm of dW."""
    out = []
    for edit in store.edits_of_fact(fact_id):
        delta = edit_delta(store, edit)
        out.append({"edit_id": edit.id, "parameter": edit.parameter, "checkpoint_id": edit.checkpoint_id,
                    "norm": delta.norm(), "rank": delta.rank,
                    "top_rows": top_k(row_norms(delta), k), "top_cols": top_k(col_norms(delta), k)})
    return {"fact_id": fact_id, "edits": out}


def weight_report(store: Store, checkpoint_id: int, parameter: str | None, row: int | None, col: int | None,
                  k: int = 10) -> dict:
    """The active facts that changed one output row (or input column) the most."""
    scores = []
    for edit in store.active_edits(checkpoint_id):
        if parameter and edit.parameter != parameter:
            continue
        delta = edit_delta(store, edit)
        norms = row_norms(delta) if row is not None else col_norms(delta)
        index = row if row is not None else col
        if not 0 <= index < norms.numel():
            raise ValueError(f"{'row' if row is not None else 'column'} {index} is out of range for {edit.parameter} "
                             f"(0..{norms.numel() - 1})")
        scores.append({"fact_id": edit.fact_id, "edit_id": edit.id, "parameter": edit.parameter,
                       "change": float(norms[index])})
    scores.sort(key=lambda s: s["change"], reverse=True)
    return {"row": row, "col": col, "facts": scores[:k]}


def overlap_report(store: Store, checkpoint_id: int, a: int, b: int) -> dict:
    """Cosine between two facts' deltas on each parameter both of them changed."""
    edits = {}
    for edit in store.active_edits(checkpoint_id):
        if edit.fact_id in (a, b):
            edits.setdefault(edit.fact_id, {})[edit.parameter] = edit
    if a not in edits or b not in edits:
        missing = [x for x in (a, b) if x not in edits]
        raise ValueError(f"fact(s) {missing} have no active edit on this checkpoint")
    shared = sorted(set(edits[a]) & set(edits[b]))
    return {"a": a, "b": b, "cosine": {p: cosine(edit_delta(store, edits[a][p]), edit_delta(store, edits[b][p])) for p in shared}}
