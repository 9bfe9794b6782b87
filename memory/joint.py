"""The joint QF solve over every active fact, from the base weights W0 (DESIGN.md §1).

Keeps, per fact, its residual R_f = -(W0 (U'_f - U_f) - (V_f - V'_f)) and its plain keys
U'_f, and the Gram matrix of all plain keys, grown and shrunk block by block. Adding or
removing a fact is then O(T_f * T * D); a re-solve is a T x T Cholesky plus N x T work, with no
forward pass. The result does not depend on the order facts were added, and removing a fact
gives exactly the solve that never saw it.

QF2's solved rule (memory.qf2) is the same solve on up_proj: its facts come in by their residual
(``add_residual``), the keys being the plain pass's up_proj inputs.

With a preserving metric (memory.preserve) each fact also keeps Z_f^T = (M^{-1} U'_f)^T, the
Gram matrix is U'^T M^{-1} U', and the right factor of the delta is Z^T instead of U'^T.

Spread over layers (memory.spread), each fact also keeps its plain keys at the lower layers; the
Gram matrix is the sum of every layer's, ``solve`` gives the top layer's delta and
``lower_deltas`` the others', which share its left factor.

With soft anchors (memory.soft_anchors, ``anchor_weight`` b > 0) a fact's anchor rows are taken out
of its rows and kept as Â_f and Y_f = M^{-1} Â_f; the joint solve keeps S - I = Â^T Y over all
anchors and X = U'^T Y (rows by anchors), grown and shrunk block by block like the Gram matrix, and
``solve`` applies Woodbury's correction to the Gram matrix and the right factor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import replace

import torch

from memory.delta import LowRankDelta, NonFiniteDeltaError, tensor_sha256
from memory.fact import FactRows
from memory.focus import focused
from memory.gated import GatedMemory, GatedNeurons
from memory.preserve import LazyMetric, PreservingMetric
from memory.qf import DEFAULT_RIDGE, qf_residual, qf_solve
from memory.row_gain import Head, gain_grid, row_gains
from memory.steer import steering
from memory.soft_anchors import scaled_anchors, woodbury_solve_parts
from memory.spread import LowerLayer

Metric = PreservingMetric | LazyMetric | None


class JointQF:
    def __init__(self, W0: torch.Tensor, parameter: str, model: str = "", layer: int | None = None,
                 ridge: float = DEFAULT_RIDGE, metric: Metric = None, gain: float = 1.0,
                 max_condition: float = 0.0, method: str = "qf",
                 lower: tuple[tuple[LowerLayer, Metric], ...] = (), anchor_weight: float = 0.0,
                 head: Head | None = None, max_row_gain: float = 0.0, steer_margin: float = 0.0):
        self.W0 = W0.detach().to("cpu", torch.float32).clone()  # (N, D)
        self._W0_64: torch.Tensor | None = None  # float64 copy, made on first add
        self.base_sha256 = tensor_sha256(self.W0)
        self.parameter, self.model, self.layer, self.ridge = parameter, model, layer, ridge
        self.metric = metric  # None: the identity norm, the paper's rule
        self.gain = gain  # each fact's residual is gain * R (memory.qf, "Gain")
        # > 0: each row's own gain up to this instead, read off the head after the (last) layer (memory.row_gain)
        if max_row_gain and head is None:
            raise ValueError("row gains need the model's final norm and LM head")
        if max_row_gain:
            gain_grid(max_row_gain)  # refused now, not at the first fact
        self.head, self.max_row_gain = head, max_row_gain
        # > 0, with row gains: a row whose gained change leaves its answer less than this many nats ahead also
        # gets the least change that puts it so far ahead (memory.steer)
        if steer_margin and not max_row_gain:
            raise ValueError("steering completes the row gains: it needs them (--row-gain)")
        self.steer_margin = steer_margin
        self.max_condition = max_condition  # the row system's condition cap (memory.qf, "Ridge"); 0: none
        self.method = method  # recorded in the deltas' metadata: "qf", or "qf2" for QF2's solved rule
        if anchor_weight < 0:
            raise ValueError(f"the soft anchors' weight must be >= 0 (0: anchors are held rows), not {anchor_weight}")
        if anchor_weight > 0 and lower:
            raise ValueError("soft anchors are not combined with --spread yet; choose one")
        self.anchor_weight = anchor_weight  # > 0: the facts' anchors are a soft term of the metric, not rows
        # The layers below this one each fact is also written at (memory.spread), lowest first,
        # each with its own metric (None: the identity); () for one layer.
        self.lower = tuple(layer for layer, _ in lower)
        self._lower_metrics = tuple(metric for _, metric in lower)
        self._keys: list[Hashable] = []
        self._R: dict[Hashable, torch.Tensor] = {}  # (N, T_f) float64
        self._U_plain: dict[Hashable, torch.Tensor] = {}  # (T_f, D) float64
        self._sig: dict[Hashable, torch.Tensor] = {}  # (T_f,) float64
        self._Z: dict[Hashable, torch.Tensor] = {}  # (T_f, D) float64, M^{-1} U'_f as rows (metric only)
        self._lower_keys: dict[Hashable, torch.Tensor] = {}  # (k-1, T_f, D) float64, the plain keys below
        self._lower_Z: dict[Hashable, torch.Tensor] = {}  # (k-1, T_f, D) float64: M_l^{-1} U'_l as rows
        self._gram = torch.zeros(0, 0, dtype=torch.float64)  # over all rows, in key order
        self._anchors: dict[Hashable, torch.Tensor] = {}  # (A_f, D) float64, Â_f (soft anchors only)
        self._Y: dict[Hashable, torch.Tensor] = {}  # (A_f, D) float64, M^{-1} Â_f as rows
        self._S = torch.zeros(0, 0, dtype=torch.float64)  # Â^T Y over all anchors, in key order (S without its I)
        self._X = torch.zeros(0, 0, dtype=torch.float64)  # U'^T Y: all rows by all anchors

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._R

    @property
    def keys(self) -> list[Hashable]:
        return list(self._keys)

    @property
    def num_rows(self) -> int:
        return self._gram.shape[0]

    def _W0_double(self) -> torch.Tensor:
        if self._W0_64 is None:
            self._W0_64 = self.W0.double()
        return self._W0_64

    def _instructed_change(self, rows: FactRows) -> torch.Tensor:
        """R from a fact's captures (memory.qf), focused as configured, before any gain: (N, T_f) float64."""
        R = qf_residual(self._W0_double(), rows.U.T, rows.V.T, rows.U_plain.T, rows.V_plain.T)
        return focused(R, rows.focus) if rows.focus is not None else R

    def residual(self, rows: FactRows) -> torch.Tensor:
        """A QF fact's residual to write at its rows, (N, T_f) float64: R from its captures, focused and
        scaled by the gain (or each row's, memory.row_gain, plus its steering, memory.steer) as
        configured: as the rows record them, else decided now (``with_gains``). Gated neurons
        (memory.gated) write the same."""
        R = self._instructed_change(rows)
        if self.max_row_gain:
            rows = self._decided(rows, R)
            R.mul_(rows.gains.double())
            if self.steer_margin:
                R.add_(rows.steer.double().T)
        elif self.gain != 1.0:
            R.mul_(self.gain)
        return R

    def after_layer(self, rows: FactRows) -> torch.Tensor:
        """The plain pass's residual stream after the layer (T, N) float64."""
        return rows.V_plain.double() + rows.U_plain.double() @ self._W0_double().T

    def with_gains(self, rows: FactRows) -> FactRows:
        """``rows`` with their gains (and steering) decided for this solve's maximum (and margin), to record
        them; as they are without row gains."""
        return self._decided(rows) if self.max_row_gain else rows

    def _decided(self, rows: FactRows, R: torch.Tensor | None = None) -> FactRows:
        """``rows`` with gains and steering as they record them where decided for this maximum and
        margin, else read off the head now, from the plain pass after the layer and R, ``residual``'s
        before any gain (computed when not given; not changed)."""
        new_gains = rows.gains is None or rows.gains_max != self.max_row_gain
        new_steer = self.steer_margin and (new_gains or rows.steer is None or rows.steer_margin != self.steer_margin)
        if not (new_gains or new_steer):
            return rows
        R, h = self._instructed_change(rows) if R is None else R, self.after_layer(rows)
        read = self.head.read(h, R)  # one pass over the head for both decisions
        if new_gains:
            gains = row_gains(h, R, rows.targets, self.head, self.max_row_gain, read)
            rows = replace(rows, gains=gains, gains_max=self.max_row_gain, steer=None, steer_margin=0.0)
        if new_steer:
            gains = rows.gains.double()
            steer = steering(h, R * gains, rows.targets, self.head, self.steer_margin,
                             self.head.logits_at(h, R, gains, read))
            rows = replace(rows, steer=steer.T.float(), steer_margin=self.steer_margin)
        return rows

    def add(self, key: Hashable, rows: FactRows) -> None:
        """Add a QF fact: its residual from its captures (``residual``)."""
        R = self.residual(rows)
        lower = rows.keys_at(tuple(layer.layer for layer in self.lower)) if self.lower else None
        if self.anchor_weight > 0 and rows.anchors:  # the last rows are anchors: soft, not held
            T = rows.num_rows - rows.anchors
            self.add_residual(key, R[:, :T], rows.U_plain[:T], rows.significance[:T], lower,
                              anchor_keys=rows.U_plain[T:])
        else:
            self.add_residual(key, R, rows.U_plain, rows.significance, lower)

    def add_residual(self, key: Hashable, R: torch.Tensor, U_plain: torch.Tensor, significance: torch.Tensor,
                     lower_keys: torch.Tensor | None = None, anchor_keys: torch.Tensor | None = None) -> None:
        """Add a fact by its residual R (N, T_f), the change ``dW`` must make at its plain keys
        U_plain (T_f, D), and its rows' significance (T_f,); QF2's solved rule adds its facts so.
        Spread over layers, ``lower_keys`` (k-1, T_f, D) are its plain keys at ``self.lower``; with
        soft anchors, ``anchor_keys`` (A_f, D) are its anchors' keys."""
        if key in self._R:
            raise KeyError(f"fact {key!r} is already in the joint solve")
        if R.shape != (self.W0.shape[0], U_plain.shape[0]) or U_plain.shape[1] != self.W0.shape[1]:
            raise ValueError(f"R {tuple(R.shape)} and keys {tuple(U_plain.shape)} do not fit a {tuple(self.W0.shape)} matrix")
        wanted = (len(self.lower), *U_plain.shape)
        if self.lower and (lower_keys is None or tuple(lower_keys.shape) != wanted):
            got = None if lower_keys is None else tuple(lower_keys.shape)
            raise ValueError(f"a solve spread over {len(self.lower) + 1} layers needs the fact's keys below, {wanted}; got {got}")
        if anchor_keys is not None and anchor_keys.shape[0] and not self.anchor_weight > 0:
            raise ValueError("anchor keys are for a solve with soft anchors (anchor_weight > 0); hold them as rows")
        self._R[key] = R.detach().to("cpu", torch.float64)
        self._U_plain[key] = U_plain.detach().to("cpu", torch.float64)
        self._sig[key] = significance.double().cpu()
        new = self._U_plain[key]
        if self.metric is not None:
            self._Z[key] = new = self.metric.keys(new).cpu()
        if self.lower:
            self._lower_keys[key] = lower_keys.detach().to("cpu", torch.float64)
            self._lower_Z[key] = torch.stack([
                keys if metric is None else metric.keys(keys).cpu()
                for keys, metric in zip(self._lower_keys[key], self._lower_metrics)])
        # Block by block (no re-stacking of all keys): O(T_f * T * D) per added fact and layer.
        blocks = [self._gram_block(k, key) for k in self._keys]
        cross = torch.cat(blocks) if blocks else torch.zeros(0, new.shape[0], dtype=torch.float64)
        own = self._gram_block(key, key)
        self._gram = torch.cat([torch.cat([self._gram, cross], 1), torch.cat([cross.T, own], 1)], 0)
        if self.anchor_weight > 0:
            self._add_anchors(key, anchor_keys)
        self._keys.append(key)

    def _add_anchors(self, key: Hashable, anchor_keys: torch.Tensor | None) -> None:
        """Grow S and X by the new fact's anchors (and X by its rows); before ``key`` joins _keys."""
        D = self.W0.shape[1]
        if anchor_keys is None or anchor_keys.shape[0] == 0:
            A_hat = Y = torch.zeros(0, D, dtype=torch.float64)
        else:
            A_hat, Y = scaled_anchors(anchor_keys, self.anchor_weight, self.metric.keys if self.metric else None)
        self._anchors[key], self._Y[key] = A_hat, Y
        U_new = self._U_plain[key]
        old_Y = torch.cat([self._Y[k] for k in self._keys] + [torch.zeros(0, D, dtype=torch.float64)])
        old_A = torch.cat([self._anchors[k] for k in self._keys] + [torch.zeros(0, D, dtype=torch.float64)])
        old_U = torch.cat([self._U_plain[k] for k in self._keys] + [torch.zeros(0, D, dtype=torch.float64)])
        S_cross = old_A @ Y.T  # (A_old, A_f)
        self._S = torch.cat([torch.cat([self._S, S_cross], 1), torch.cat([S_cross.T, A_hat @ Y.T], 1)], 0)
        X_col = old_U @ Y.T  # the old rows by the new anchors (T_old, A_f)
        X_row = torch.cat([U_new @ old_Y.T, U_new @ Y.T], 1)  # the new rows by every anchor (T_f, A)
        self._X = torch.cat([torch.cat([self._X, X_col], 1), X_row], 0)

    def _gram_block(self, a: Hashable, b: Hashable) -> torch.Tensor:
        """U'_a^T Z_b summed over the layers: the (T_a, T_b) block of the Gram matrix."""
        block = self._U_plain[a] @ self._Z.get(b, self._U_plain[b]).T
        if self.lower:
            block += torch.einsum("ltd,lsd->ts", self._lower_keys[a], self._lower_Z[b])
        return block

    def remove(self, key: Hashable) -> None:
        if key not in self._R:
            raise KeyError(f"fact {key!r} is not in the joint solve")
        keep = _without(self._span(key), self.num_rows)
        self._gram = self._gram[keep][:, keep]
        if self.anchor_weight > 0:
            kept_anchors = _without(self._span(key, self._anchors), self._S.shape[0])
            self._S = self._S[kept_anchors][:, kept_anchors]
            self._X = self._X[keep][:, kept_anchors]
        self._keys.remove(key)
        del self._R[key], self._U_plain[key], self._sig[key]
        for table in (self._Z, self._lower_keys, self._lower_Z, self._anchors, self._Y):
            table.pop(key, None)

    def rename(self, old: Hashable, new: Hashable) -> None:
        """Give a fact a new key (e.g. its ledger id once recorded); the solve is unchanged."""
        if new in self._R:
            raise KeyError(f"fact {new!r} is already in the joint solve")
        self._keys[self._keys.index(old)] = new
        for table in (self._R, self._U_plain, self._sig, self._Z, self._lower_keys, self._lower_Z, self._anchors,
                      self._Y):
            if old in table:
                table[new] = table.pop(old)

    def _span(self, key: Hashable, blocks: dict[Hashable, torch.Tensor] | None = None) -> tuple[int, int]:
        """Where ``key``'s rows are in the Gram matrix (or its anchors, with ``blocks=self._anchors``)."""
        blocks = self._U_plain if blocks is None else blocks
        start = 0
        for k in self._keys:
            stop = start + blocks[k].shape[0]
            if k == key:
                return start, stop
            start = stop
        raise KeyError(key)

    def solve(self) -> LowRankDelta:
        """dW for all facts, as factors (left (N, T), right (T, D)); rank 0 with no facts."""
        N, D = self.W0.shape
        if not self._keys:
            left, right = torch.zeros(N, 0, dtype=torch.float64), torch.zeros(0, D)
        else:
            R = torch.cat([self._R[k] for k in self._keys], 1)
            sig = torch.cat([self._sig[k] for k in self._keys])
            U_plain = torch.cat([self._U_plain[k] for k in self._keys]).T  # (D, T)
            Z = torch.cat([self._Z[k] for k in self._keys]).T if self.metric is not None else None
            gram = self._gram
            if self.anchor_weight > 0:  # Woodbury on the metric with the anchors (memory.soft_anchors)
                S = self._S + torch.eye(self._S.shape[0], dtype=torch.float64)
                Y = torch.cat([self._Y[k] for k in self._keys])
                gram, Zt = woodbury_solve_parts(gram, (U_plain if Z is None else Z).T, self._X, S, Y)
                Z = Zt.T
            left, right = qf_solve(R, U_plain, sig, self.ridge, gram=gram, Z=Z, max_condition=self.max_condition)
        return LowRankDelta(
            left=left, right=right, parameter=self.parameter, base_sha256=self.base_sha256,
            model=self.model, layer=self.layer, metadata={"method": self.method, "facts": str(len(self._keys)), **self.solver},
        )

    @property
    def solver(self) -> dict[str, str]:
        """The solve's settings, as recorded with each edit."""
        return {"ridge": str(self.ridge), "preserve": str(self.metric.strength if self.metric else 0.0),
                "question_keys": str(getattr(self.metric, "question_weight", 0.0)),
                "gain": str(self.gain), "condition": str(self.max_condition), "spread": str(len(self.lower) + 1),
                "soft_anchors": str(self.anchor_weight), "row_gain": str(self.max_row_gain)}

    def lower_deltas(self, delta: LowRankDelta, key: Hashable | None = None) -> list[LowRankDelta]:
        """The lower layers' deltas of the solve ``delta`` (the top layer's, from ``solve``), lowest
        first: ``left Z_l^T``, the same left factor (memory.spread); with ``key``, that fact's shares."""
        start, stop = (0, self.num_rows) if key is None else self._span(key)
        keys = self._keys if key is None else [key]
        out = []
        for i, layer in enumerate(self.lower):
            right = torch.cat([self._lower_Z[k][i] for k in keys]) if keys else torch.zeros(0, self.W0.shape[1])
            out.append(LowRankDelta(left=delta.left[:, start:stop], right=right, parameter=layer.parameter,
                                    base_sha256=layer.base_sha256, model=self.model, layer=layer.layer,
                                    metadata={**delta.metadata, "spread_top": str(self.layer)}))
        return out

    def share(self, delta: LowRankDelta, key: Hashable) -> LowRankDelta:
        """One fact's part of a joint delta (its columns of left, rows of right); shares sum to dW."""
        start, stop = self._span(key)
        return LowRankDelta(
            left=delta.left[:, start:stop], right=delta.right[start:stop], parameter=self.parameter,
            base_sha256=self.base_sha256, model=self.model, layer=self.layer, metadata={"method": self.method},
        )


def _without(span: tuple[int, int], size: int) -> torch.Tensor:
    """The indices 0 .. size-1 outside ``span`` [start, stop)."""
    start, stop = span
    return torch.cat([torch.arange(0, start), torch.arange(stop, size)])


Solved = LowRankDelta | GatedNeurons  # what a solve of the facts gives: the joint delta, or the gated neurons


def commit(facts: JointQF | GatedMemory, key: Hashable, record: Callable[[Hashable, Solved], Hashable] | None = None
           ) -> tuple[Solved, Hashable, float]:
    """Solve ``facts`` (a JointQF, or the gated memory of memory.gated) with the just-added fact ``key``
    and (``record(key, solved)`` -> its durable key, e.g. the ledger's edit id) rename it. On any
    error, a non-finite solve included, the fact is removed again and the error raised: nothing else
    has changed. Returns the solve (the joint delta, or the gated neurons), the fact's key and the
    solve's seconds (the record excluded)."""
    start = time.perf_counter()
    try:
        solved = facts.solve()
        if not solved.is_finite():
            raise NonFiniteDeltaError(f"the solve with fact {key!r} is not finite; nothing was written")
        seconds = time.perf_counter() - start
        if record is not None:
            durable = record(key, solved)
            facts.rename(key, durable)
            key = durable
    except BaseException:
        facts.remove(key)
        raise
    return solved, key, seconds
