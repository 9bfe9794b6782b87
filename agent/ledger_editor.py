"""The model and the ledger together: weights always equal W0 + the active facts of the ledger.

``LedgerEditor`` is where memory (the math) meets store (the ledger); neither knows the other.
Opening one rebuilds the live weights from the ledger (the joint QF solve from the stored
captures, no forward pass). Learning records before it applies: a crash in between leaves a
ledger from which the next start rebuilds the right weights. Undo and redo only change a fact's
status and re-sync, so an undone fact is gone exactly, as if it had never been learned.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import torch

from memory import architecture as arch
from memory.answering import PAPER_RULE, qf2_settings_of, solver_settings_of
from memory.consolidate import Consolidation, EditorConfig, QFEditor
from memory.fact import Fact, FactRows
from memory.loading import LoadedModel
from memory.qf2_block import installed
from memory.qf2_editor import QF2Editor, QF2Rows, require_converted
from memory.subject_gate import SUBJECT_LAYER
from store import Store

log = logging.getLogger(__name__)

METHODS = ("qf", "qf2")


def rows_to_tensors(rows: FactRows) -> dict[str, torch.Tensor]:
    return {
        "U": rows.U, "V": rows.V, "U_plain": rows.U_plain, "V_plain": rows.V_plain,
        "significance": rows.significance, "targets": torch.tensor(rows.targets, dtype=torch.int64),
        "queries": torch.tensor([rows.queries], dtype=torch.int64),
        "anchors": torch.tensor([rows.anchors], dtype=torch.int64),
        "form_rows": torch.tensor([rows.form_rows], dtype=torch.int64),
    } | ({"focus": rows.focus} if rows.focus is not None else {}) | ({
        "gains": rows.gains, "gains_max": torch.tensor([rows.gains_max], dtype=torch.float64),
    } if rows.gains is not None else {}) | ({
        "steer": rows.steer, "steer_margin": torch.tensor([rows.steer_margin], dtype=torch.float64),
    } if rows.steer is not None else {}) | ({
        "subject_key": rows.subject_key, "subject_layer": torch.tensor([SUBJECT_LAYER], dtype=torch.int64),
    } if rows.subject_key is not None else {}) | ({
        "subject_mean": rows.subject_mean} if rows.subject_mean is not None else {}) | ({
        "openings": rows.openings} if rows.openings is not None else {}) | ({
        "recent": rows.recent} if rows.recent is not None else {}) | ({
        "lower_keys": rows.lower_keys, "lower_layers": torch.tensor(rows.lower_layers, dtype=torch.int64),
    } if rows.lower_keys is not None else {})


def rows_from_tensors(tensors: dict[str, torch.Tensor], answer: str) -> FactRows:
    return FactRows(
        answer, tuple(tensors["targets"].tolist()), tensors["U"], tensors["V"],
        tensors["U_plain"], tensors["V_plain"], tensors["significance"], tensors.get("focus"),
        int(tensors["queries"]) if "queries" in tensors else 1,  # captures recorded before phrasings: 1
        int(tensors["anchors"]) if "anchors" in tensors else 0,  # captures recorded before anchors: 0
        tensors.get("lower_keys"), tuple(tensors["lower_layers"].tolist()) if "lower_layers" in tensors else (),
        int(tensors["form_rows"]) if "form_rows" in tensors else 0,  # captures recorded before answer forms: 0
        gains=tensors.get("gains"), gains_max=float(tensors["gains_max"]) if "gains_max" in tensors else 0.0,
        steer=tensors.get("steer"), steer_margin=float(tensors["steer_margin"]) if "steer_margin" in tensors else 0.0,
        # a key of another subject layer (if SUBJECT_LAYER ever changes) would match nothing: not used
        subject_key=tensors.get("subject_key") if int(tensors.get("subject_layer", -1)) == SUBJECT_LAYER else None,
        subject_mean=tensors.get("subject_mean"), openings=tensors.get("openings"),  # recorded since 2026-12-07
        recent=tensors.get("recent"),  # recorded since the refractory rule (2026-12-07, afternoon)
    )


def qf2_rows_to_tensors(rows: QF2Rows) -> dict[str, torch.Tensor]:
    return {"x": rows.x, "y_star": rows.y_star, "significance": rows.significance,
            "targets": torch.tensor(rows.targets, dtype=torch.int64)} | {
        name: getattr(rows, name) for name in ("y_plain", "x_star") if getattr(rows, name) is not None}


def qf2_rows_from_tensors(tensors: dict[str, torch.Tensor], answer: str) -> QF2Rows:
    return QF2Rows(answer, tuple(tensors["targets"].tolist()), tensors["x"], tensors["y_star"], tensors["significance"],
                   y_plain=tensors.get("y_plain"), x_star=tensors.get("x_star"))


@dataclass
class Learned:
    fact_id: int
    edit_id: int
    result: Consolidation


class LedgerEditor:
    def __init__(self, store: Store, loaded: LoadedModel, config: EditorConfig = EditorConfig(), progress=None):
        self.store, self.loaded, self.config, self.progress = store, loaded, config, progress
        self.editors: dict[int, QFEditor] = {}
        self.checkpoint_id: int | None = None  # set below, once the first editor's matrices are known
        self.current = self._editor(config.layer)
        # QF2 on the converted layer, where the model was converted by QFt (memory.qf2_block).
        self.qf2: QF2Editor | None = QF2Editor(loaded, self._config(None)) if installed(loaded.model) else None
        self.checkpoint_id = self._checkpoint()
        self.load_seconds = self.sync()

    # --- layers -----------------------------------------------------------------------
    def _config(self, layer: int | None) -> EditorConfig:
        return replace(self.config, layer=layer)

    def _editor(self, layer: int | None) -> QFEditor:
        probe = QFEditor.layer_for(self.loaded.model, layer)
        if probe not in self.editors:
            editor = QFEditor(self.loaded, self._config(probe), progress=self.progress)
            for other in self.editors.values():
                shared = sorted(set(other.layers) & set(editor.layers))
                if shared:
                    raise ValueError(f"facts at layer {probe} and at layer {other.layer} would both write layer(s) "
                                     f"{shared} with --spread {self.config.spread}; use --spread 1 for this ledger")
            self.editors[probe] = editor
            if self.checkpoint_id is not None:  # a layer opened later: record its base weights too
                self._checkpoint()
        return self.editors[probe]

    def _qf2_editor(self) -> QF2Editor:
        if self.qf2 is None:
            require_converted(self.loaded)  # raises, saying how to convert
        return self.qf2

    def _checkpoint(self) -> int:
        model = self.loaded.model
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        return self.store.get_or_create_checkpoint(
            name=self.loaded.name, config_sha256=self.loaded.config_sha256(),
            parameters={p: sha for e in self.editors.values() for p, sha in e.base_sha256s().items()}
            | ({self.qf2.parameter: self.qf2.base_sha256} if self.qf2 else {}), dtype=dtype,
        )

    # --- syncing with the ledger --------------------------------------------------------
    def sync(self) -> float:
        """Make every layer's joint solve hold exactly the ledger's active edits; rewrite weights."""
        start = time.perf_counter()
        self._sync_qf2()
        active = self.store.active_edits(self.checkpoint_id, method="qf")
        by_layer: dict[int, list] = {}
        for edit in active:
            by_layer.setdefault(edit.layer, []).append(edit)
        for layer in by_layer:
            self._editor(layer)
        self._warn_on_other_solver(active)
        for layer, editor in self.editors.items():
            wanted = {edit.id: edit for edit in by_layer.get(layer, [])}
            changed = False
            for key in editor.fact_keys:
                if key not in wanted:
                    editor.drop(key)
                    changed = True
            for edit_id, edit in wanted.items():
                if not editor.holds(edit_id):
                    fact = self.store.fact(edit.fact_id)
                    rows = rows_from_tensors(self.store.load_captures(edit_id), fact.answer or "")
                    # learned without the subject-centered gate: its subject's mean now (one forward pass)
                    rows = editor.with_subject_mean(rows, fact.subject, editor.chat_prompt_ids)
                    try:
                        editor.add_rows(edit_id, rows)
                    except ValueError as exc:  # captured without the lower layers' keys this spread needs
                        raise ValueError(
                            f"fact {edit.fact_id} (edit {edit_id}) was learned with --spread "
                            f"{edit.hyperparams.get('spread', 1)} and cannot be spread over {len(editor.layers)} layers "
                            f"({exc}); run with --spread {edit.hyperparams.get('spread', 1)}, or undo the fact and "
                            "learn it again") from None
                    changed = True
            if changed or not editor.written_all():
                editor.rebuild()
        seconds = time.perf_counter() - start
        log.info("weights rebuilt from %d active edits in %.2fs", len(active), seconds)
        return seconds

    def _warn_on_other_solver(self, active) -> None:
        """The weights are the joint solve of the active facts under *this* process's solver
        settings; say so when facts were recorded under others (they are re-solved, not lost)."""
        # Only these act on the joint solve; focus and significance are kept with each fact's rows.
        # An edit recorded before they existed was solved with the paper's rule.
        names = ("preserve", "gain", "condition", "keys_data", "question_keys", "soft_anchors", "spread", "gate", "row_gain",
                 "subject_gate", "steer", "answer_gate", "subject_prime", "subject_centered", "subject_full",
                 "refractory")
        now = {name: getattr(self.current.config, name) for name in names}  # as this layer's editor decided them
        other = [e.id for e in active
                 if _acting(now, e.hyperparams) != _acting({k: e.hyperparams.get(k, PAPER_RULE[k]) for k in names},
                                                           e.hyperparams)]
        if other:
            log.warning("%d active edit(s) were solved with other settings than %s (e.g. edit %d); the weights "
                        "are re-solved with these", len(other), now, other[0])

    def _sync_qf2(self) -> None:
        """Hold exactly the active QF2 edits: stacked ones by their stored factors, solved-rule ones
        in the joint solve by their stored captures (no forward pass); rebuild if anything changed."""
        active = self.store.active_edits(self.checkpoint_id, method="qf2")
        if self.qf2 is None:
            if active:
                raise ValueError(f"the ledger holds QF2 edits for {self.loaded.name}, which is not converted")
            return
        editor, wanted = self.qf2, {e.id: e for e in active}
        held = editor.keys
        for key in held - set(wanted):
            editor.drop(key)
        for edit_id in set(wanted) - held:
            edit = wanted[edit_id]
            captures = self.store.load_captures(edit_id) if edit.hyperparams.get("rule") == "solve" else {}
            if "x_star" in captures:  # a solved-rule edit: joint
                editor.hold_rows(edit_id, qf2_rows_from_tensors(captures, ""))
            else:  # the paper's or the delta rule, or a solved edit recorded before the joint solve
                editor.hold_delta(edit_id, editor.delta_from_factors(**self.store.load_factors(edit_id)))
        if held != set(wanted):
            editor.rebuild()

    @property
    def active_facts(self) -> int:
        return sum(e.num_facts for e in self.editors.values()) + (len(self.qf2.keys) if self.qf2 else 0)

    # --- events -----------------------------------------------------------------------
    def learn(
        self, fact: Fact, source: dict | None = None, fact_id: int | None = None, layer: int | None = None,
        supersedes_id: int | None = None, method: str = "qf",
    ) -> Learned:
        """Consolidate ``fact`` (new, or an existing ledger fact by ``fact_id``) with ``method``
        and record it before it is applied.

        With ``supersedes_id`` the older fact is marked superseded in the same transaction and
        drops out of the weights."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        editor = self._qf2_editor() if method == "qf2" else (self._editor(layer) if layer is not None else self.current)
        ids: dict[str, int] = {}

        def record(key, rows, delta):  # delta: what the solve gave (QF's gated neurons with --gate)
            if method == "qf2":
                share, captures, lower = delta, qf2_rows_to_tensors(rows), []
                hyperparams = {"beta": editor.block.beta, **qf2_settings_of(editor.config)}
            else:
                # lower: a spread solve's lower layers' shares (they share its left factor); none otherwise
                (share, *lower), captures = editor.share_of(key, delta), rows_to_tensors(rows)
                hyperparams = {"ridge": editor.config.ridge, **solver_settings_of(editor.config)}
                if rows.forms:  # the model's own wording of the answer, written beside the given one
                    hyperparams["answer_forms_written"] = list(rows.forms)
            fact_dict = None if fact_id is not None else {
                "instruction": fact.instruction, "query": fact.query, "answer": rows.answer,
                "significance": rows.query_significance.tolist(), "source": source or {},
                "supersedes_id": supersedes_id, "phrasings": list(fact.phrasings), "subject": fact.subject,
            }
            ids["fact"], ids["edit"] = self.store.record_consolidation(
                checkpoint_id=self.checkpoint_id, fact_id=fact_id, fact=fact_dict, method=method,
                layer=editor.layer, parameter=share.parameter,  # the MLP's gated neurons, with --gate
                hyperparams={**hyperparams, "system": editor.config.system, "rows": rows.num_rows,
                             "model_layers": arch.num_layers(self.loaded.model)},
                captures=captures, factors={"left": share.left, "right": share.right}
                | {f"right:{d.parameter}": d.right for d in lower},  # agent.audit reads them back
                delta_norm=(share.norm() ** 2 + sum(d.norm() ** 2 for d in lower)) ** 0.5, rank=share.rank,
            )
            return ids["edit"]

        result = editor.learn(fact, record=record, verify=supersedes_id is None)
        if supersedes_id is not None:
            self.sync()  # the superseded fact leaves the weights
            result.verification = editor.ask(fact.query).text
        self.store.set_verification(ids["edit"], result.verification)
        return Learned(ids["fact"], ids["edit"], result)

    def with_phrasings(self, fact: Fact) -> Fact:
        """``fact`` with the model's rephrasings of its query (``config.phrasings``; none when 0)."""
        if fact.phrasings or not self.config.phrasings:
            return fact
        return replace(fact, phrasings=self.current.phrasings_for(fact.query))

    def undo(self, fact_id: int) -> float:
        self.store.undo(fact_id)
        return self.sync()

    def redo(self, fact_id: int) -> float:
        self.store.redo(fact_id)
        return self.sync()

    def ask(self, query: str, max_new_tokens: int | None = None):
        return self.current.ask(query, max_new_tokens=max_new_tokens)


def _acting(settings: dict, hyperparams: dict) -> dict:
    """The solve ``settings`` that act on an edit recorded with ``hyperparams``: the preserving
    metric's keys only with preserve > 0 and no gate, the fixed gain only without row gains (steering
    only with them), the anchors' softness only for an edit with anchors (swapped subjects or near
    questions)."""
    acting = dict(settings)
    if not acting["preserve"] or acting.get("gate"):  # gated neurons leave down_proj alone: no metric acts
        acting["keys_data"], acting["question_keys"] = None, 0.0
    if acting.get("row_gain"):  # each row's own gain: the fixed one does not act
        acting["gain"] = None
    else:  # steering completes the row gains: nothing without them
        acting["steer"] = 0.0
    if not (hyperparams.get("anchors", 0) or hyperparams.get("near_questions", 0)):
        acting["soft_anchors"] = 0.0
    return acting
