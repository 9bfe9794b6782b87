"""Consolidation: fact -> two teacher-forced captures -> joint QF solve -> write -> verify.

``QFEditor`` owns the edited matrix of one loaded model. The live weight is always
``W0 + dW(all active facts)``, re-solved jointly from W0 (memory.joint); it is kept in float32
whatever the model's dtype. Computing never mutates the model; only ``_write`` does.

Issue-7 options (EditorConfig): ``preserve`` > 0 solves in the K0-preserving metric, whose key
covariance is collected when the first fact is solved (from the model at its base weights: edits
at lower layers would leak into the keys) and cached (memory.preserve); ``gain`` scales the
residual to write (memory.qf); ``focus`` and ``auto_significance`` run the plain pass to the end:
focus keeps only the change of the logits a row is about (memory.focus), automatic significance
drops the rows it already predicts (memory.fact.auto_significance); ``anchors`` adds rows of the
query asked of other subjects, held unchanged (memory.anchors). What they decide is stored with
the fact's rows, so the ledger's rebuild and undo stay exact.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

import torch

from memory import architecture as arch
from memory.capture import Capture, right_padded_ids
from memory.delta import LowRankDelta, NonFiniteDeltaError, tensor_sha256
from memory.anchors import contrast_queries
from memory.fact import Fact, FactRows, auto_significance, significance_vector, stack_rows, with_anchors
from memory.float32_linear import keep_float32
from memory.joint import JointQF
from memory.answering import Answering, Consolidation, ConsolidationError, EditorConfig
from memory.focus import focus_bases
from memory.loading import LoadedModel
from memory.paths import data_dir
from memory.preserve import LazyMetric, PreservingMetric, Progress, key_covariance, key_data_pairs
from memory.prompts import Pass, build_pass, instructed_system, render_prompt

log = logging.getLogger(__name__)

# record(temporary key, the fact's rows, the joint delta) -> durable key; see QFEditor.learn
Recorder = Callable[[Hashable, FactRows, LowRankDelta], Hashable]


class QFEditor(Answering):
    def __init__(self, loaded: LoadedModel, config: EditorConfig = EditorConfig(), progress: Progress | None = None):
        super().__init__(loaded, config)
        model = loaded.model
        self.layer = self.layer_for(model, config.layer)
        if config.focus and self.layer != arch.num_layers(model) - 1:
            raise ValueError(f"--focus works at the last layer ({arch.num_layers(model) - 1}), not at layer {self.layer}")
        if config.focus and config.anchors:
            raise ValueError("--focus and --anchors do not combine (an anchor has no target to focus on); choose one")
        self.down_name = arch.module_path(model, self.layer, "down_proj")
        self.norm_name = arch.module_path(model, self.layer, "mlp_norm")
        self.parameter = f"{self.down_name}.weight"
        keep_float32(model, self.down_name)
        W0 = model.get_parameter(self.parameter)
        metric = None
        if config.preserve > 0:
            sha = tensor_sha256(W0.detach().float().cpu())
            metric = LazyMetric(config.preserve, lambda: self._metric(sha, progress))
        self.joint = JointQF(W0, self.parameter, model=loaded.name, layer=self.layer, ridge=config.ridge, metric=metric,
                            gain=config.gain, max_condition=config.condition)
        self.delta: LowRankDelta = self.joint.solve()
        self._next_key = 0

    @staticmethod
    def layer_for(model, layer: int | None) -> int:
        """The layer an editor with ``layer`` edits: the given one (checked) or the default."""
        return arch.check_layer(model, arch.default_layer(model) if layer is None else layer)

    def prepare_keys(self) -> str:
        """Collect (or find) the key covariance now, not at the first solve; says what was done."""
        if not isinstance(self.joint.metric, LazyMetric):
            return "the paper's identity norm (preserve 0) needs no keys"
        self.joint.metric.built()
        return f"keys for layer {self.layer} ready under {data_dir() / 'keys'}"

    def _metric(self, weights_sha256: str, progress: Progress | None) -> PreservingMetric:
        """The preserving metric of this layer, from the cached key covariance (collected once)."""
        pairs = key_data_pairs(self.config.keys_data) if self.config.keys_data else ()
        C = key_covariance(self.loaded, self.layer, self.down_name, self.config.system, weights_sha256, progress, pairs)
        return PreservingMetric(C.to(self.loaded.device), self.config.preserve)

    # --- computing (never mutates the model) --------------------------------------------
    def capture_pass(self, p: Pass, top: int = 0) -> tuple[torch.Tensor, ...]:
        """One forward pass: rows of (U, V) at layer L's down_proj. Stopped after it, unless
        ``top`` > 0: then run to the end and also return the top ``top`` tokens at each row."""
        self._check_length(p)
        with Capture(self.model, [self.norm_name, self.down_name], stop=not top) as cap:
            out = cap.run(input_ids=p.input_ids.to(self.loaded.device), use_cache=False,
                          **({"logits_to_keep": len(p.targets)} if top else {}))
        rows = p.rows.to(cap.inputs[self.down_name].device)
        U = cap.inputs[self.down_name][0, rows].float().cpu()
        V = cap.inputs[self.norm_name][0, rows].float().cpu()
        if not top:
            return U, V
        return U, V, out.logits[0, -len(p.targets):].topk(top, -1).indices.cpu()  # the rows are the last positions

    def capture_rows(self, instructed: Pass, plain: Pass, answer: str, significance: torch.Tensor) -> FactRows:
        """The two teacher-forced passes over the same targets; automatic significance and focus
        (both need the plain pass's predictions) if configured."""
        U, V = self.capture_pass(instructed)
        config, focus = self.config, None
        if not (config.auto_significance or config.focus):
            U_plain, V_plain = self.capture_pass(plain)
            return FactRows(answer, plain.targets, U, V, U_plain, V_plain, significance)
        U_plain, V_plain, top = self.capture_pass(plain, top=max(config.focus + 1, 1))
        if config.auto_significance:
            significance = auto_significance(top[:, 0], plain.targets, significance)
        if config.focus:
            head = self.model.get_output_embeddings().weight
            norm_gain = self.model.get_submodule(arch.architecture_of(self.model).final_norm).weight
            focus = focus_bases(head, norm_gain, plain.targets, top)
        return FactRows(answer, plain.targets, U, V, U_plain, V_plain, significance, focus)

    def capture(self, fact: Fact, answer: str | None = None) -> FactRows:
        """Both teacher-forced passes over the same answer tokens (two forward passes), for the
        query and each of its phrasings; the rows of all of them, in that order."""
        answer = (answer or "").strip() or self.answer_for(fact)
        system, parts = self.config.system, []
        tokens = self.emitted_tokens(answer)  # the model's own answer: its own tokens (memory.answering)
        for query in fact.queries:
            instructed = build_pass(self.tokenizer, query, answer, instructed_system(fact.instruction, system), tokens)
            plain = build_pass(self.tokenizer, query, answer, system, tokens)
            significance = significance_vector(fact.significance, len(plain.targets) - 1)
            parts.append(self.capture_rows(instructed, plain, answer, significance))
        return self.anchored(stack_rows(parts), fact.query, fact.subject, lambda q: render_prompt(self.tokenizer, q, system))

    def anchored(self, rows: FactRows, query: str, subject: str | None, prompt_ids: Callable[[str], list[int]]) -> FactRows:
        """``rows`` with the anchors of ``config.anchors`` (memory.anchors): ``query`` asked of other
        subjects, each put to the model as ``prompt_ids(question)``; ``rows`` as they are when the
        fact has no subject (or anchors are off)."""
        questions = contrast_queries(query, subject, self.config.anchors)
        return with_anchors(rows, *self.capture_anchors([prompt_ids(q) for q in questions])) if questions else rows

    def capture_anchors(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (A, D) and residuals (A, N) at the last token of each prompt (the position that
        decides the answer), in one right-padded forward pass."""
        ids, mask = right_padded_ids(prompts, pad=0)
        device = self.loaded.device
        with Capture(self.model, [self.norm_name, self.down_name], stop=True) as cap:
            cap.run(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        at = (torch.arange(len(prompts)), torch.tensor([len(p) - 1 for p in prompts]))
        return tuple(cap.inputs[name].float().cpu()[at] for name in (self.down_name, self.norm_name))

    # --- mutating ---------------------------------------------------------------------
    @torch.no_grad()
    def write(self, delta: LowRankDelta) -> None:
        """weight <- W0 + dW (refusing non-finite deltas before anything is written)."""
        weight = self.model.get_parameter(self.parameter)
        if not delta.is_finite():
            raise NonFiniteDeltaError(f"refusing to write a non-finite delta into {self.parameter}")
        weight.copy_(self.joint.W0.to(weight.device))
        if delta.rank:  # adding an empty delta would still turn W0's -0.0 entries into +0.0
            delta.apply(self.model, keep_for_revert=False)  # undo = rebuild from W0, no backup needed
        self.delta = delta

    def rebuild(self) -> float:
        """Re-solve all active facts jointly from W0 and write the result; returns seconds."""
        start = time.perf_counter()
        self.write(self.joint.solve())
        return time.perf_counter() - start

    def add_rows(self, key: Hashable, rows: FactRows) -> None:
        self.joint.add(key, rows)

    def remove(self, key: Hashable) -> float:
        """Drop a fact and re-solve: exact undo, no forward pass. Returns seconds."""
        self.joint.remove(key)
        return self.rebuild()

    def learn(
        self, fact: Fact, key: Hashable | None = None, verify: bool = True, record: Recorder | None = None
    ) -> Consolidation:
        """Capture, solve jointly, (record), write, verify. On any error before the write the
        fact is dropped again and the weights are untouched.

        ``record(key, rows, delta)`` runs after the solve and *before* the write (record before
        apply); it returns the fact's durable key (e.g. the ledger's edit id).
        """
        if key is None:
            # A tuple never collides with the durable keys a recorder returns (ledger ids).
            key, self._next_key = ("pending", self._next_key), self._next_key + 1
        t0 = time.perf_counter()
        rows = self.capture(fact)
        t1 = time.perf_counter()
        self.joint.add(key, rows)
        recorder = None if record is None else (lambda k, d: record(k, rows, d))
        delta, key, solve_seconds = self.joint.commit(key, recorder)
        t2 = t1 + solve_seconds
        self.write(delta)
        t3 = time.perf_counter()
        verification = self.ask(fact.query).text if verify else ""
        timings = {"capture": t1 - t0, "solve": t2 - t1, "record_apply": t3 - t2, "verify": time.perf_counter() - t3}
        log.info("learned %r in %.2fs (%d rows)", fact.query, t3 - t0, rows.num_rows)
        return Consolidation(key, fact, rows.answer, rows.num_rows, verification, t3 - t0, timings)
