"""QF2 consolidation: fact -> plain MLP input x and instructed firing y* -> Hebbian dW on up_proj.

Works only on a model converted by QFt (memory.qf2_block installed, e.g. loaded from a `qf
convert` checkpoint): the edit is ``mlp.up_proj.weight`` of the converted layer. Both passes are
single forward passes stopped at that layer's up_proj input; y* is the instructed pass's firing
pattern sigmoid(beta * up_proj(h)) with the weights as they are (earlier facts included) and the
checkpoint's own beta.

The live weight is always ``W0 + the stacked deltas + the joint solve``:

- the paper's and the delta rule's updates stack: each fact keeps its rank-T factor pair (memory.qf2),
  and removing one gives exactly the weight a history without it would have had (to float32
  rounding; bit for bit when no other fact is active);
- the solved rule's facts are solved jointly from W0 (memory.joint, as QF's): each keeps its plain
  up_proj inputs x and its residual from W0 (memory.qf2.qf2_residual), adding a fact keeps the
  earlier ones' rows met, and removing one is the solve that never saw it.

A solved-rule edit recorded before the joint solve (no ``x_star`` among its captures) is held as
its stored factors, stacked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from memory import architecture as arch
from memory.answering import Answering, Consolidation, ConsolidationError, EditorConfig
from memory.capture import Capture
from memory.delta import LowRankDelta, NonFiniteDeltaError, tensor_sha256, weight_set_to
from memory.fact import Fact, QuestionRows, significance_vector
from memory.float32_linear import keep_float32
from memory.loading import LoadedModel
from memory.prompts import Pass, build_pass, instructed_system
from memory.joint import JointQF, commit
from memory.qf2 import firing, qf2_factors, qf2_residual
from memory.qf2_block import QF2Block, installed

METHOD = "qf2"


class NotConvertedError(ConsolidationError):
    """QF2 needs a QFt-converted model."""


@dataclass
class QF2Rows(QuestionRows):
    """What QF2 needs of one fact (T rows per question: the answer tokens, then the end of turn;
    the query's, then each phrasing's)."""

    answer: str
    targets: tuple[int, ...]
    x: torch.Tensor  # (T, D_model) up_proj inputs, plain pass
    y_star: torch.Tensor  # (T, D_ff) firing pattern, instructed pass
    significance: torch.Tensor  # (T,)
    queries: int = 1
    y_plain: torch.Tensor | None = None  # (T, D_ff) the plain pass's firing, for the delta rule only
    x_star: torch.Tensor | None = None  # (T, D_model) up_proj inputs, instructed pass: the solved rule only


def require_converted(loaded: LoadedModel) -> QF2Block:
    """The model's QF2 block; NotConvertedError (saying how to convert) when it has none."""
    block = installed(loaded.model)
    if block is None:
        raise NotConvertedError(
            f"{loaded.name} is not converted for QF2: run `qf convert --model {loaded.name} --out NAME`, "
            "then use `--model NAME` (or use --method qf)")
    return block


# record(temporary key, the fact's rows, its own delta) -> durable key (e.g. the ledger's edit id).
# Its own delta: its factors for a stacked rule, its share of the joint delta for the solved rule.
QF2Recorder = Callable[[Hashable, QF2Rows, LowRankDelta], Hashable]


class QF2Editor(Answering):
    method = METHOD

    def __init__(self, loaded: LoadedModel, config: EditorConfig = EditorConfig()):
        super().__init__(loaded, config)
        block = require_converted(loaded)
        if config.layer is not None and config.layer != block.layer:
            raise ConsolidationError(f"QF2 edits the converted layer {block.layer}, not layer {config.layer}")
        self.block, self.layer = block, block.layer
        self.up_name = arch.module_path(loaded.model, self.layer, "up_proj")
        self.parameter = f"{self.up_name}.weight"
        keep_float32(loaded.model, self.up_name)
        self.W0 = loaded.model.get_parameter(self.parameter).detach().to("cpu", torch.float32).clone()
        self.base_sha256 = tensor_sha256(self.W0)
        self.deltas: dict[Hashable, LowRankDelta] = {}  # the stacked facts (paper and delta rules)
        self.joint = JointQF(self.W0, self.parameter, model=loaded.name, layer=self.layer, method=METHOD)
        self._next_key = 0

    @property
    def keys(self) -> set[Hashable]:
        """Every fact held, stacked or in the joint solve."""
        return set(self.deltas) | set(self.joint.keys)

    # --- computing (never mutates the model, or restores it) ---------------------------------
    def instructed_answer(self, fact: Fact) -> str:
        """The model's own answer with the instruction in context. For the solved rule it is asked at
        W0: the joint solve's targets are the instructed pass's firing at W0, and an answer asked at
        the live weights (earlier facts in) can be one the W0 pass does not give. Measured: on the
        last-layer 0.5B conversion, with the first protocol fact written, the second fact's answer
        came out "Need more information to answer.", which the targets at W0 did not lead to."""
        if self.config.qf2_rule != "solve":
            return super().instructed_answer(fact)
        with weight_set_to(self.model, self.parameter, self.W0):  # the other facts' updates out
            return super().instructed_answer(fact)

    def _up_input(self, p: Pass) -> torch.Tensor:
        """One forward pass stopped at up_proj of the converted layer: its input at the answer rows."""
        self._check_length(p)
        with Capture(self.model, [self.up_name], stop=True) as cap:
            cap.run(input_ids=p.input_ids.to(self.loaded.device), use_cache=False)
        h = cap.inputs[self.up_name][0]
        return h[p.rows.to(h.device)].float()

    def capture(self, fact: Fact) -> QF2Rows:
        """x from the plain pass and y* from the instructed pass, for the query and each phrasing."""
        answer = self.answer_for(fact)
        up = self.model.get_submodule(self.up_name)
        xs, ys, y_plain, x_star = [], [], [], []
        rule = self.config.qf2_rule
        tokens = self.emitted_tokens(answer)  # the model's own answer: its own tokens (memory.answering)
        for query in fact.queries:
            plain = build_pass(self.tokenizer, query, answer, self.config.system, tokens)
            instructed = build_pass(self.tokenizer, query, answer, instructed_system(fact.instruction, self.config.system),
                                    tokens)
            x, x_instructed = self._up_input(plain), self._up_input(instructed)
            with torch.no_grad():  # firings at the current weights, other facts' updates included
                ys.append(firing(up(x_instructed).float(), self.block.beta).cpu())
                if rule == "delta":
                    y_plain.append(firing(up(x).float(), self.block.beta).cpu())
            if rule == "solve":  # the joint solve works from W0: the inputs are all it needs
                x_star.append(x_instructed.cpu())
            xs.append(x.cpu())
        significance = significance_vector(fact.significance, len(plain.targets) - 1).repeat(len(xs))
        stacked = lambda parts: torch.cat(parts) if parts else None  # noqa: E731
        return QF2Rows(answer, plain.targets * len(xs), torch.cat(xs), torch.cat(ys), significance, len(xs),
                       stacked(y_plain), stacked(x_star))

    def delta_for(self, rows: QF2Rows) -> LowRankDelta:
        """A stacked rule's (paper, delta) update for ``rows``."""
        left, right = qf2_factors(rows.x, rows.y_star, rows.significance, self.config.lr, rows.y_plain)
        return self.delta_from_factors(left, right)

    def residual(self, rows: QF2Rows) -> torch.Tensor:
        """The solved rule's target change at W0 for ``rows`` (memory.qf2.qf2_residual), (D_ff, T)."""
        if rows.x_star is None:
            raise ValueError("these rows were captured without the instructed inputs x*: capture them with qf2_rule='solve'")
        return qf2_residual(self.W0, rows.x, rows.x_star, self.block.beta)

    def delta_from_factors(self, left: torch.Tensor, right: torch.Tensor) -> LowRankDelta:
        return LowRankDelta(left=left, right=right, parameter=self.parameter, base_sha256=self.base_sha256,
                            model=self.loaded.name, layer=self.layer, metadata={"method": METHOD})

    # --- mutating ---------------------------------------------------------------------
    @torch.no_grad()
    def rebuild(self, joint: LowRankDelta | None = None) -> float:
        """weight <- W0 + the stacked deltas + the joint solve (``joint``, else solved now), summed
        in float64; returns seconds."""
        start = time.perf_counter()
        weight = self.model.get_parameter(self.parameter)
        total = self.W0.double()
        for delta in self.deltas.values():
            total += delta.dense(torch.float64)
        joint = self.joint.solve() if joint is None else joint
        if joint.rank:
            total += joint.dense(torch.float64)
        if not bool(torch.isfinite(total).all()):
            raise NonFiniteDeltaError(f"the QF2 deltas on {self.parameter} are not finite; nothing was written")
        weight.copy_(total.to(weight.dtype).to(weight.device))
        return time.perf_counter() - start

    def hold_delta(self, key: Hashable, delta: LowRankDelta) -> None:
        """Hold a stacked fact by its factors (no rebuild)."""
        self.deltas[key] = delta

    def hold_rows(self, key: Hashable, rows: QF2Rows) -> None:
        """Hold a solved-rule fact in the joint solve by its captured rows (no rebuild)."""
        self.joint.add_residual(key, self.residual(rows), rows.x, rows.significance)

    def drop(self, key: Hashable) -> None:
        """Stop holding a fact (no rebuild)."""
        if key in self.joint:
            self.joint.remove(key)
        else:
            del self.deltas[key]

    def remove(self, key: Hashable) -> float:
        """Drop a fact and rebuild: exact undo. Returns seconds."""
        self.drop(key)
        return self.rebuild()

    def learn(self, fact: Fact, key: Hashable | None = None, verify: bool = True,
              record: QF2Recorder | None = None) -> Consolidation:
        """Capture, compute dW (stacked) or re-solve (joint), (record), write, verify; on any error
        before the write nothing changes."""
        if key is None:
            key, self._next_key = ("pending", self._next_key), self._next_key + 1
        t0 = time.perf_counter()
        rows = self.capture(fact)
        t1 = time.perf_counter()
        joint = None
        if self.config.qf2_rule == "solve":
            self.hold_rows(key, rows)
            # the ledger records each fact's own share of the joint delta
            recorder = None if record is None else (lambda k, d: record(k, rows, self.joint.share(d, k)))
            joint, key, solve_seconds = commit(self.joint, key, recorder)
            t2 = t1 + solve_seconds
        else:
            delta = self.delta_for(rows)
            if not delta.is_finite():
                raise NonFiniteDeltaError(f"the QF2 update for {fact.query!r} is not finite; nothing was written")
            t2 = time.perf_counter()
            if record is not None:
                key = record(key, rows, delta)
            self.hold_delta(key, delta)
        try:
            self.rebuild(joint)
        except BaseException:
            self.drop(key)
            raise
        t3 = time.perf_counter()
        verification = self.ask(fact.query).text if verify else ""
        timings = {"capture": t1 - t0, "solve": t2 - t1, "record_apply": t3 - t2, "verify": time.perf_counter() - t3}
        return Consolidation(key, fact, rows.answer, rows.num_rows, verification, t3 - t0, timings)
