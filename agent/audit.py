"""Audit: which facts changed which weights, from the factors stored with each edit.

Each edit stores its fact's share of the joint delta at the time it was recorded
(left[:, rows_f] @ right[rows_f]); the shares of all active facts sum to the live dW. An edit
spread over layers (memory.spread) also stores the right factor of each lower layer's share, as
``right:<parameter>`` (they share the left factor), so it changed several parameters.
"""

from __future__ import annotations

from memory.audit import col_norms, cosine, row_norms, top_k
from memory.delta import LowRankDelta
from store import Store


def edit_deltas(store: Store, edit) -> list[LowRankDelta]:
    """The edit's share of each parameter it changed: its own, then a spread edit's lower layers."""
    factors = store.load_factors(edit.id)
    lower = [LowRankDelta(factors["left"], right, name.removeprefix("right:"), "")
             for name, right in factors.items() if name.startswith("right:")]
    return [LowRankDelta(factors["left"], factors["right"], edit.parameter, "", layer=edit.layer), *lower]


def fact_report(store: Store, fact_id: int, k: int = 10) -> dict:
    """Top-k output rows and input columns of each of the fact's edits, by norm of dW, per parameter."""
    out = []
    for edit in store.edits_of_fact(fact_id):
        for delta in edit_deltas(store, edit):
            out.append({"edit_id": edit.id, "parameter": delta.parameter, "checkpoint_id": edit.checkpoint_id,
                        "norm": delta.norm(), "rank": delta.rank,
                        "top_rows": top_k(row_norms(delta), k), "top_cols": top_k(col_norms(delta), k)})
    return {"fact_id": fact_id, "edits": out}


def weight_report(store: Store, checkpoint_id: int, parameter: str | None, row: int | None, col: int | None,
                  k: int = 10) -> dict:
    """The active facts that changed one output row (or input column) the most."""
    scores = []
    for edit in store.active_edits(checkpoint_id):
        for delta in edit_deltas(store, edit):
            if parameter and delta.parameter != parameter:
                continue
            norms = row_norms(delta) if row is not None else col_norms(delta)
            index = row if row is not None else col
            if not 0 <= index < norms.numel():
                raise ValueError(f"{'row' if row is not None else 'column'} {index} is out of range for "
                                 f"{delta.parameter} (0..{norms.numel() - 1})")
            scores.append({"fact_id": edit.fact_id, "edit_id": edit.id, "parameter": delta.parameter,
                           "change": float(norms[index])})
    scores.sort(key=lambda s: s["change"], reverse=True)
    return {"row": row, "col": col, "facts": scores[:k]}


def overlap_report(store: Store, checkpoint_id: int, a: int, b: int) -> dict:
    """Cosine between two facts' deltas on each parameter both of them changed."""
    deltas: dict[int, dict[str, LowRankDelta]] = {}
    for edit in store.active_edits(checkpoint_id):
        if edit.fact_id in (a, b):
            deltas.setdefault(edit.fact_id, {}).update({d.parameter: d for d in edit_deltas(store, edit)})
    if a not in deltas or b not in deltas:
        missing = [x for x in (a, b) if x not in deltas]
        raise ValueError(f"fact(s) {missing} have no active edit on this checkpoint")
    shared = sorted(set(deltas[a]) & set(deltas[b]))
    return {"a": a, "b": b, "cosine": {p: cosine(deltas[a][p], deltas[b][p]) for p in shared}}
