"""QF2 consolidation: fact -> plain MLP input x and instructed firing y* -> Hebbian dW on up_proj.

Works only on a model converted by QFt (memory.qf2_block installed, e.g. loaded from a `qf
convert` checkpoint): the edit is ``mlp.up_proj.weight`` of the converted layer. Both passes are
single forward passes stopped at that layer's up_proj input; y* is the instructed pass's firing
pattern sigmoid(beta * up_proj(h)) with the weights as they are (earlier facts included) and the
checkpoint's own beta.

The live weight is always ``W0 + sum of the active facts' deltas`` (each a rank-T factor pair from
memory.qf2): updates stack, so removing a fact and rebuilding gives exactly the weight a history
without it would have had (to float32 rounding; bit for bit when no other fact is active).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from memory import architecture as arch
from memory.answering import Answering, Consolidation, ConsolidationError, EditorConfig
from memory.capture import Capture
from memory.delta import LowRankDelta, NonFiniteDeltaError, tensor_sha256
from memory.fact import Fact, significance_vector
from memory.float32_linear import keep_float32
from memory.loading import LoadedModel
from memory.prompts import Pass, build_pass, instructed_system
from memory.qf2 import firing, qf2_factors, qf2_solved_factors
from memory.qf2_block import QF2Block, installed

METHOD = "qf2"


class NotConvertedError(ConsolidationError):
    """QF2 needs a QFt-converted model."""


@dataclass
class QF2Rows:
    """What QF2 needs of one fact (T rows per question: the answer tokens, then the end of turn;
    the query's, then each phrasing's)."""

    answer: str
    targets: tuple[int, ...]
    x: torch.Tensor  # (T, D_model) up_proj inputs, plain pass
    y_star: torch.Tensor  # (T, D_ff) firing pattern, instructed pass
    significance: torch.Tensor  # (T,)
    queries: int = 1
    y_plain: torch.Tensor | None = None  # (T, D_ff) the plain pass's firing, for the delta rule only
    z_plain: torch.Tensor | None = None  # (T, D_ff) up_proj pre-activations, plain pass: the solved rule only
    z_star: torch.Tensor | None = None  # (T, D_ff) the same, instructed pass: the solved rule only

    @property
    def num_rows(self) -> int:
        return self.x.shape[0]

    @property
    def query_significance(self) -> torch.Tensor:
        return self.significance[: self.num_rows // self.queries]


def require_converted(loaded: LoadedModel) -> QF2Block:
    """The model's QF2 block; NotConvertedError (saying how to convert) when it has none."""
    block = installed(loaded.model)
    if block is None:
        raise NotConvertedError(
            f"{loaded.name} is not converted for QF2: run `qf convert --model {loaded.name} --out NAME`, "
            "then use `--model NAME` (or use --method qf)")
    return block


# record(temporary key, the fact's rows, its delta) -> durable key (e.g. the ledger's edit id)
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
        self.deltas: dict[Hashable, LowRankDelta] = {}
        self._next_key = 0

    # --- computing (never mutates the model) --------------------------------------------
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
        xs, ys, y_plain, z_plain, z_star = [], [], [], [], []
        rule = self.config.qf2_rule
        tokens = self.emitted_tokens(answer)  # the model's own answer: its own tokens (memory.answering)
        for query in fact.queries:
            plain = build_pass(self.tokenizer, query, answer, self.config.system, tokens)
            instructed = build_pass(self.tokenizer, query, answer, instructed_system(fact.instruction, self.config.system),
                                    tokens)
            x = self._up_input(plain)
            with torch.no_grad():
                z = up(self._up_input(instructed)).float()
                ys.append(firing(z, self.block.beta).cpu())
                if rule == "delta":  # at the current weights, other facts' updates included
                    y_plain.append(firing(up(x).float(), self.block.beta).cpu())
                if rule == "solve":
                    z_plain.append(up(x).float().cpu())
                    z_star.append(z.cpu())
            xs.append(x.cpu())
        significance = significance_vector(fact.significance, len(plain.targets) - 1).repeat(len(xs))
        stacked = lambda parts: torch.cat(parts) if parts else None  # noqa: E731
        return QF2Rows(answer, plain.targets * len(xs), torch.cat(xs), torch.cat(ys), significance, len(xs),
                       stacked(y_plain), stacked(z_plain), stacked(z_star))

    def delta_for(self, rows: QF2Rows) -> LowRankDelta:
        if self.config.qf2_rule == "solve":
            left, right = qf2_solved_factors(rows.x, rows.z_plain, rows.z_star, rows.significance, self.block.beta)
        else:
            left, right = qf2_factors(rows.x, rows.y_star, rows.significance, self.config.lr, rows.y_plain)
        return self.delta_from_factors(left, right)

    def delta_from_factors(self, left: torch.Tensor, right: torch.Tensor) -> LowRankDelta:
        return LowRankDelta(left=left, right=right, parameter=self.parameter, base_sha256=self.base_sha256,
                            model=self.loaded.name, layer=self.layer, metadata={"method": METHOD})

    # --- mutating ---------------------------------------------------------------------
    @torch.no_grad()
    def rebuild(self) -> float:
        """weight <- W0 + the sum of the active deltas (summed in float64); returns seconds."""
        start = time.perf_counter()
        weight = self.model.get_parameter(self.parameter)
        total = self.W0.double()
        for delta in self.deltas.values():
            total += delta.dense(torch.float64)
        if not bool(torch.isfinite(total).all()):
            raise NonFiniteDeltaError(f"the QF2 deltas on {self.parameter} are not finite; nothing was written")
        weight.copy_(total.to(weight.dtype).to(weight.device))
        return time.perf_counter() - start

    def set_deltas(self, deltas: dict[Hashable, LowRankDelta]) -> float:
        """Hold exactly ``deltas`` (e.g. the ledger's active QF2 edits) and rebuild."""
        self.deltas = dict(deltas)
        return self.rebuild()

    def remove(self, key: Hashable) -> float:
        """Drop a fact's delta and rebuild: exact undo. Returns seconds."""
        del self.deltas[key]
        return self.rebuild()

    def learn(self, fact: Fact, key: Hashable | None = None, verify: bool = True,
              record: QF2Recorder | None = None) -> Consolidation:
        """Capture, compute dW, (record), add, verify; on any error before the write nothing changes."""
        if key is None:
            key, self._next_key = ("pending", self._next_key), self._next_key + 1
        t0 = time.perf_counter()
        rows = self.capture(fact)
        t1 = time.perf_counter()
        delta = self.delta_for(rows)
        if not delta.is_finite():
            raise NonFiniteDeltaError(f"the QF2 update for {fact.query!r} is not finite; nothing was written")
        t2 = time.perf_counter()
        if record is not None:
            key = record(key, rows, delta)
        self.deltas[key] = delta
        try:
            self.rebuild()
        except BaseException:
            del self.deltas[key]
            raise
        t3 = time.perf_counter()
        verification = self.ask(fact.query).text if verify else ""
        timings = {"capture": t1 - t0, "solve": t2 - t1, "record_apply": t3 - t2, "verify": time.perf_counter() - t3}
        return Consolidation(key, fact, rows.answer, rows.num_rows, verification, t3 - t0, timings)
