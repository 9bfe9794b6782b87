"""Key-gated neurons: QF's residual written by new MLP neurons that fire only near a fact's key (issue 7).

QF's linear update of down_proj moves every prompt in proportion to the key it shares with the
fact's (examples/key_separation.py): after hundreds of facts, unrelated questions carry a sum of
small shares of every fact's change, and their answers fill with other facts' targets. Here the
same residual is written by neurons added to the edited layer's MLP, one per fact row t, whose key
is the plain pass's MLP input at that row (x'_t, the post-attention norm's output) and whose
activation is a thresholded cosine:

    a_t(x) = relu(cos(x, k_t) - tau) / (1 - tau)          in [0, 1]; 1 at x = k_t, 0 below tau
    MLP'(x) = MLP(x) + sum_t a_t(x) v_t

The values V (J, N) are QF's, solved jointly from the base model over every active fact's rows:
at each row s the added output must be the residual QF writes there, ``sum_t a_t(x'_s) v_t = r_s``
(``A V = R^T``, A (J, J) with A_st = a_t(x'_s)), which is QF's constraint ``W' U' = W U + V - V'``
with the gated activations in place of down_proj's inputs. A row's neuron fires on its own key, so
``A`` has ones on its diagonal and is mostly zero elsewhere: neurons only interact within groups of
keys closer than tau, and the solve is one small least-squares system per such group (connected
components of A's pattern): exact for a lone neuron (v = r), within the ridge's small compromise
(RIDGE) in a group, which keeps rows that nearly coincide from getting huge values. Everything is
upstream of the added neurons, so, as in QF's joint solve, the result does not depend on the order
facts arrive and removing a fact (its neurons and its rows) is exact with no forward pass.

Why it helps where the linear update cannot: on the 0.5B's last layer (zsRE, chat template, 100
facts, probe in docs/RESULTS.md) a paraphrase's key has cosine above 0.9 with its fact's key for
96% of rows, while a neighbour question's rows reach 0.9 with *any* of the 100 facts' keys for 3%;
a linear update instead moves the neighbour by a share of every fact's change. It cannot separate
what the key itself does not: CounterFact's neighbours (the same relation about another subject)
are closer to the fact's key than its paraphrases (which open with an unrelated fragment).

With an answer gate (memory.answer_gate) a neuron also needs the base model's answer state at the
position to match its row's: the activations above are multiplied by that step, in the solve too.
With the subject-centered gate (memory.subject_center) a neuron whose subject is named reads the
cosine of x and its key both centered on its subject's mean, in the solve too. With a refractory span
(memory.refractory) a neuron does not fire where its target token is among the last input tokens, in the
solve too.

Significance: a row of weight 0 gets no neuron and no constraint; positive weights weight the rows'
squared errors where rows of one group compete. Shapes: N the model width, J the neurons (rows).
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from memory.answer_gate import AnswerReader, answer_keys
from memory.refractory import NO_TOKEN, RECENT_TOKENS, RecentTokens, holds_target, refractory_targets
from memory.subject_center import centered_cosines, centered_keys, centered_offsets
from memory.subject_gate import SUBJECT_MATCH, SubjectPresence, unit_rows

# tau: the cosine above which a neuron starts firing; the setting measured best without subject
# gating (docs/RESULTS.md, "Key-gated neurons")
DEFAULT_THRESHOLD = 0.85
# Relative Tikhonov weight of a group's least-squares solve. It only matters where a group's keys
# nearly coincide: there the activations are nearly equal, the exact solve's values grow like the
# system's condition number, and the model's own rounding of x (bfloat16: ~1e-3 in a cosine, i.e.
# ~1e-2 in an activation at tau 0.9) would then be multiplied by them. 1e-3 caps the condition
# number of A^T A near 1e3, so such rows get a least-squares compromise of bounded size; a lone
# neuron (a = 1 at its own row and nowhere else) is exact whatever the ridge.
RIDGE = 1e-3
# With a subject prime (memory.subject_gate), the cosine above which a neuron whose subject has been named
# starts its weak firing (docs/RESULTS.md, "The subject prime")
PRIME_FROM = 0.1
# How far below a pair's threshold the one product of a new fact's keys with every key held may put a
# pair that fires alone: float32 rounding of a cosine of unit vectors over a few thousand dims is far
# below it (GatedMemory.add takes each candidate's cosine again, alone).
PAIR_SLACK = 1e-4


def gate(cosines: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """a = relu(cos - tau) / (1 - tau), elementwise (tau a number, or one per element); 0 where tau is
    1: such a neuron never fires (a fact's neurons away from its subject under ``--gate 1``)."""
    if not isinstance(tau, torch.Tensor):
        return torch.relu(cosines - tau) / (1.0 - tau) if tau < 1.0 else torch.zeros_like(cosines)
    span = 1.0 - tau
    return torch.where(span > 0, torch.relu(cosines - tau) / span.clamp_min(torch.finfo(span.dtype).tiny), 0.0)


def named_gate(cosines: torch.Tensor, tau_named: float, prime: float, full: float | torch.Tensor = 1.0) -> torch.Tensor:
    """The activation of a neuron whose subject has been named: ``gate(cos, tau_named)``, a ramp from 0 at
    ``tau_named`` to 1 at cosine 1, or with ``full`` below 1 a steeper one reaching 1 at ``full`` and held
    there (its whole value from that cosine up, memory.subject_center; ``full`` a number, or one per element,
    1 where the plain ramp); and with a subject prime at least ``prime * gate(cos, PRIME_FROM)``, a weak firing
    on every question about the subject that grows with its cosine (memory.subject_gate)."""
    def steep(span):  # 0 at tau_named, 1 at tau_named + span and above
        return torch.clamp(torch.relu(cosines - tau_named) / span, max=1.0)

    if isinstance(full, torch.Tensor):  # float64, so that each span rounds as a number's does below
        a = torch.where(full >= 1.0, gate(cosines, tau_named), steep((full - tau_named).to(cosines.dtype)))
    else:
        a = gate(cosines, tau_named) if full >= 1.0 else steep(full - tau_named)
    return torch.maximum(a, prime * gate(cosines, PRIME_FROM)) if prime else a


def unknown_subject_threshold(tau: float, tau_named: float) -> float:
    """With subject gating, the threshold of a fact whose subject is not known ("What is my daughter's
    name?" names none): where it is named cannot be told, so its neurons fire everywhere as the gate
    alone does best (DEFAULT_THRESHOLD), or above ``tau_named`` if that is higher, never above the
    gate's ``tau``. Without subject gating (``tau_named`` 0): ``tau``."""
    return min(tau, max(tau_named, DEFAULT_THRESHOLD)) if tau_named else tau


def solve_values(A: torch.Tensor, R_rows: torch.Tensor, weights: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """The values V (J, N) with ``A V = R_rows`` in the weighted least-squares sense, ridge relative
    to ``A``'s scale: A (T, J) activations of the J neurons at the T rows, R_rows (T, N) the residual
    each row needs, weights (T,) > 0. float64."""
    sw = weights.double().sqrt()[:, None]
    Aw, Rw = A.double() * sw, R_rows.double() * sw
    gram = Aw.T @ Aw
    lam = ridge * float(gram.diagonal().mean()) if gram.numel() else 0.0
    gram.diagonal().add_(lam)
    return torch.linalg.solve(gram, Aw.T @ Rw)


def groups(num: int, pairs: torch.Tensor) -> list[list[int]]:
    """Connected components of ``num`` nodes joined by ``pairs`` (E, 2), each sorted; union-find."""
    parent = list(range(num))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs.tolist():
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for i in range(num):
        members.setdefault(root(i), []).append(i)
    return list(members.values())


def kept_pairs(A: dict[tuple[int, int], float], pairs: torch.Tensor,
               keep: torch.Tensor) -> tuple[dict[tuple[int, int], float], torch.Tensor]:
    """The (row, neuron) activations ``A`` and their ``pairs`` (len(A), 2) (in A's order) where ``keep``
    (len(A),) bool holds."""
    return {pair: v for (pair, v), k in zip(A.items(), keep.tolist()) if k}, pairs[keep]


@dataclass(frozen=True)
class GatedNeurons:
    """The solved neurons of all active facts: unit keys (J, N), values (J, N), the threshold (one for
    all, or one per neuron (J,)); float32.

    Subject gating (memory.subject_gate): ``subject_keys`` (S, N) unit keys of the facts' subjects,
    ``subject_of`` (J,) each neuron's subject (-1: none), and ``tau_named`` the threshold a neuron
    fires above while its subject has been named in the context (0: no subject gating), and
    ``prime`` the most it fires below that once named, and ``full`` the cosine from which it fires at its
    whole value once named (memory.gated.named_gate; 1: at cosine 1; one for all, or one per neuron (J,)).

    Answer gating (memory.answer_gate): ``answer_keys`` (J, N) each row's unit centered answer state,
    ``answer_mean`` (N,) the mean they are centered on, and ``answer_tau`` the cosine a position's
    must reach for the neuron to fire (0: no answer gating).

    Subject-centered gating (memory.subject_center): ``subject_means`` (S, N) each subject's mean, aligned
    with ``subject_keys``, ``centered_keys`` (J, N) each neuron's key centered on its subject's mean, unit
    rows (zero for a neuron with no subject), and ``centered_offsets`` (2, J) the constants the centered
    cosine needs (memory.subject_center.centered_offsets); where its subject is named a neuron reads the
    centered cosine instead of the raw one (None: the raw one).

    The refractory rule (memory.refractory): ``refractory`` the span n, how many of a position's last input
    tokens a neuron checks for its target (0: off), and ``refractory_targets`` (J,) each neuron's target,
    NO_TOKEN for a neuron the rule leaves alone."""

    keys: torch.Tensor
    values: torch.Tensor
    tau: float | torch.Tensor
    subject_keys: torch.Tensor | None = None
    subject_of: torch.Tensor | None = None
    tau_named: float = 0.0
    answer_keys: torch.Tensor | None = None
    answer_mean: torch.Tensor | None = None
    answer_tau: float = 0.0
    prime: float = 0.0
    subject_means: torch.Tensor | None = None
    centered_keys: torch.Tensor | None = None
    centered_offsets: torch.Tensor | None = None
    full: float | torch.Tensor = 1.0
    refractory: int = 0
    refractory_targets: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return self.keys.shape[0]

    @property
    def subject_gated(self) -> bool:
        return bool(self.tau_named) and self.subject_keys is not None and self.subject_keys.shape[0] > 0

    @property
    def answer_gated(self) -> bool:
        return bool(self.answer_tau) and self.answer_keys is not None

    @property
    def refractory_gated(self) -> bool:
        return bool(self.refractory) and self.refractory_targets is not None

    def output(self, x: torch.Tensor, named: torch.Tensor | None = None, answer: torch.Tensor | None = None,
               recent: torch.Tensor | None = None) -> torch.Tensor:
        """sum_t a_t(x) v_t for MLP inputs x (..., N), in x's dtype; ``named`` (..., S) bool: which
        subjects have been named up to each position (None: none); ``answer`` (..., N): the answer state
        at each position, which answer-gated neurons need (memory.answer_gate); ``recent`` (..., span) int64:
        the last input tokens at each position, which the refractory rule needs (memory.refractory)."""
        if not self.count:
            return torch.zeros_like(x)
        cos = unit_rows(x) @ self.keys.T.to(x.device)  # .to: a no-op once installed (install)
        a = gate(cos, self.tau)
        if named is not None and self.subject_gated:  # the lower threshold where a neuron's subject was named
            named_here = named[..., self.subject_of.clamp_min(0)] & (self.subject_of >= 0)  # (..., J)
            named_cos = cos if self.subject_means is None else centered_cosines(
                x, self.subject_means.to(x.device), self.centered_keys.to(x.device), self.subject_of,
                self.centered_offsets.to(x.device))
            a = torch.where(named_here, named_gate(named_cos, self.tau_named, self.prime, self.full), a)
        if self.answer_gated:
            if answer is None or answer.shape != x.shape:
                raise ValueError("answer-gated neurons need the answer state at every position of the MLP's input")
            a = a * (answer_keys(answer, self.answer_mean) @ self.answer_keys.T.to(x.device) >= self.answer_tau)
        if self.refractory_gated:
            if recent is None or recent.shape != (*x.shape[:-1], self.refractory):
                raise ValueError(f"refractory neurons need the last {self.refractory} input tokens at every position "
                                 "of the MLP's input")
            a = a.masked_fill(holds_target(recent[..., None, :], self.refractory_targets.to(x.device)), 0.0)
        return (a @ self.values.to(x.device)).to(x.dtype)

    def to(self, device: torch.device | str) -> "GatedNeurons":
        """The same neurons on ``device`` (where the MLP runs: no copy per forward pass)."""
        tau, full = (v.to(device) if isinstance(v, torch.Tensor) else v for v in (self.tau, self.full))
        subject_keys, subject_of, answer_keys_, answer_mean, subject_means, centered, offsets, targets = (
            None if t is None else t.to(device)
            for t in (self.subject_keys, self.subject_of, self.answer_keys, self.answer_mean, self.subject_means,
                      self.centered_keys, self.centered_offsets, self.refractory_targets))
        return GatedNeurons(self.keys.to(device), self.values.to(device), tau, subject_keys, subject_of, self.tau_named,
                            answer_keys_, answer_mean, self.answer_tau, self.prime, subject_means, centered, offsets,
                            full, self.refractory, targets)

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.values).all())

    def value_norm(self) -> float:
        return float(self.values.double().norm())


class _Growing:
    """Rows appended to one tensor, grown by doubling; ``rows`` is a view of those held."""

    def __init__(self, held: torch.Tensor):
        self._data, self.count = held, held.shape[0]

    def append(self, rows: torch.Tensor) -> None:
        end = self.count + rows.shape[0]
        if end > self._data.shape[0]:
            grown = self._data.new_zeros((max(end, 2 * self._data.shape[0], 64), *self._data.shape[1:]))
            grown[:self.count] = self._data[:self.count]
            self._data = grown
        self._data[self.count:end] = rows
        self.count = end

    @property
    def rows(self) -> torch.Tensor:
        return self._data[:self.count]


class _KeyBank:
    """What a new fact is compared with, for every fact held, in the facts' order, so that it meets all
    of them in one product: their unit keys (J, N) with each row's fact position and row within that
    fact, and per fact whether it has a subject key and the key (a zero row where it has none; made at
    the first). Rebuilt when a fact leaves."""

    def __init__(self, width: int):
        self.width = width
        self.clear()

    def clear(self) -> None:
        self.keys = _Growing(torch.zeros(0, self.width))
        self.fact, self.row = (_Growing(torch.zeros(0, dtype=torch.int64)) for _ in range(2))
        self.has_subject = _Growing(torch.zeros(0, dtype=torch.bool))
        self.subjects: _Growing | None = None
        self.facts = 0

    def append(self, K: torch.Tensor, subject_key: torch.Tensor | None) -> None:
        """The next fact's unit keys (T, N) and unit subject key (N_s,) or None."""
        self.keys.append(K)
        self.fact.append(torch.full((K.shape[0],), self.facts, dtype=torch.int64))
        self.row.append(torch.arange(K.shape[0]))
        self.has_subject.append(torch.tensor([subject_key is not None]))
        if subject_key is not None and self.subjects is None:
            self.subjects = _Growing(torch.zeros(self.facts, subject_key.shape[0]))
        if self.subjects is not None:
            self.subjects.append(subject_key[None] if subject_key is not None else torch.zeros(1, self.subjects.rows.shape[1]))
        self.facts += 1


class GatedMemory:
    """Every active fact's rows (keys, residuals, weights), keyed; ``solve`` gives the neurons.

    The pairs of keys that fire each other are kept as facts come and go (a new fact's rows are
    compared with every key once), so a solve is one small system per group of interacting rows.
    With ``tau_named`` > 0 (subject gating, memory.subject_gate) a fact's rows name its own subject,
    and another's when their subject keys match: such pairs fire above ``tau_named``, others above
    tau; the neurons of a fact with no subject key fire above ``tau_unknown`` (None:
    unknown_subject_threshold) wherever they are. With tau 1 (the default since 2026-12-06) a fact
    with a subject fires nowhere but where its subject is named, so facts about different subjects
    never fire each other and are solved apart. With ``answer_tau`` > 0 (memory.answer_gate) each fact
    also brings its rows' answer states, centered on ``answer_mean``; a row fires another's neuron only
    where their answer keys' cosine reaches ``answer_tau`` too. With a subject ``prime`` a row that names a
    neuron's subject also fires it weakly below ``tau_named`` (named_gate). With ``subject_centered``
    (memory.subject_center) each fact with a subject key also brings its subject's mean MLP input, and a
    row that names a neuron's subject fires it by their cosine centered on the neuron's subject mean. With
    ``full`` below 1 a row that names the subject of a neuron whose row opens an answer (``add``'s
    ``openings``) fires it at its whole value from that cosine up (named_gate); the neurons of the rows
    within an answer keep the ramp to cosine 1: an answer's later rows are close to one another (the digits
    of a date: centered cosines 0.4-0.8), and at their whole value they would fire each other alike, so
    that no values could tell them apart (docs/RESULTS.md, "Whole values at the answer's opening"). With a
    ``refractory`` span n > 0 (memory.refractory) each fact also brings its rows' targets and last input
    tokens, and a row does not fire a neuron whose target is among its last n tokens (the neurons whose own
    row holds their target exempt)."""

    def __init__(self, width: int, tau: float = DEFAULT_THRESHOLD, ridge: float = RIDGE, tau_named: float = 0.0,
                 tau_unknown: float | None = None, answer_tau: float = 0.0, answer_mean: torch.Tensor | None = None,
                 prime: float = 0.0, subject_centered: bool = False, full: float = 1.0, refractory: int = 0):
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"the gate's threshold must be in [0, 1], not {tau}")
        if tau == 1.0 and not tau_named:
            raise ValueError("gate 1 fires a fact's neurons only where its subject is named: it needs a subject gate")
        if not 0.0 <= tau_named <= tau:
            raise ValueError(f"the threshold once the subject is named must be in [0, {tau}] (the gate's), not {tau_named}")
        tau_unknown = unknown_subject_threshold(tau, tau_named) if tau_unknown is None else tau_unknown
        if not 0.0 <= tau_unknown <= tau:
            raise ValueError(f"the threshold of a fact with no subject must be in [0, {tau}], not {tau_unknown}")
        if not 0.0 <= answer_tau < 1.0:
            raise ValueError(f"the answer gate must be in [0, 1), not {answer_tau}")
        if answer_tau and (answer_mean is None or answer_mean.shape != (width,)):
            raise ValueError(f"an answer gate needs the mean answer state ({width},) its keys are centered on")
        if not 0.0 <= prime <= 1.0:
            raise ValueError(f"the subject prime must be in [0, 1], not {prime}")
        if prime and not tau_named:
            raise ValueError("a subject prime fires a fact's neurons where its subject is named: it needs a subject gate")
        if subject_centered and not tau_named:
            raise ValueError("the subject-centered gate reads a fact's neurons where its subject is named: it needs a "
                             "subject gate")
        if full != 1.0 and not tau_named:
            raise ValueError("a neuron's whole value from a lower cosine is where its subject is named: it needs a "
                             "subject gate")
        if full != 1.0 and not tau_named < full < 1.0:
            raise ValueError(f"the cosine a named neuron fires at its whole value from must be in ({tau_named}, 1] "
                             f"(above the subject gate), not {full}")
        if not 0 <= refractory <= RECENT_TOKENS:
            raise ValueError(f"the refractory span must be in [0, {RECENT_TOKENS}] tokens (those a fact's rows record), "
                             f"not {refractory}")
        self.prime, self.subject_centered, self.full, self.refractory = prime, subject_centered, full, refractory
        self.width, self.tau, self.ridge, self.tau_named, self.tau_unknown = width, tau, ridge, tau_named, tau_unknown
        self.answer_tau = answer_tau
        self.answer_mean = answer_mean.float() if answer_tau else None
        self._keys: list[Hashable] = []
        self._K: dict[Hashable, torch.Tensor] = {}  # (T_f, N) float32 unit keys
        self._R: dict[Hashable, torch.Tensor] = {}  # (T_f, N) float64 residual per row
        self._w: dict[Hashable, torch.Tensor] = {}  # (T_f,) float64 row weights > 0
        self._S: dict[Hashable, torch.Tensor] = {}  # (N_s,) float32 unit subject key, for facts that have one
        self._F: dict[Hashable, torch.Tensor] = {}  # (T_f, N) float32 unit answer keys (answer gate only)
        # subject-centered gate only, for facts with a subject key: (N,) float32 subject mean, and (T_f, N)
        # float32 the rows' MLP inputs as captured (the centered cosines need them uncentered)
        self._M: dict[Hashable, torch.Tensor] = {}
        self._X: dict[Hashable, torch.Tensor] = {}
        # each fact's full cosine (full_of): ``full``, or (T_f,) float64 where some rows do not open an answer
        self._full: dict[Hashable, float | torch.Tensor] = {}
        # refractory rule only: (T_f,) int64 each neuron's refractory target, and (T_f, span) int64 each row's
        # last input tokens (memory.refractory)
        self._targets: dict[Hashable, torch.Tensor] = {}
        self._recent: dict[Hashable, torch.Tensor] = {}
        # (fact a, fact b) -> (E, 3): row a, row b, cos, for the pairs where either fires the other
        self._near: dict[tuple[Hashable, Hashable], torch.Tensor] = {}
        self._bank = _KeyBank(width)  # the keys of _K and _S again, in _keys' order, for add

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._K

    @property
    def keys(self) -> list[Hashable]:
        return list(self._keys)

    @property
    def num_rows(self) -> int:
        return sum(k.shape[0] for k in self._K.values())

    def threshold(self, a: Hashable, b: Hashable) -> float:
        """The cosine above which fact a's rows fire fact b's neurons."""
        if not self.tau_named:
            return self.tau
        has_a, has_b = a in self._S, b in self._S
        return float(self._rule(*(torch.tensor(v) for v in (has_a, has_b, self._names(a, b)))))

    def _names(self, a: Hashable, b: Hashable) -> bool:
        """Whether fact a's rows name fact b's subject (both have subject keys, and they match)."""
        return a in self._S and b in self._S and (a == b or float(self._S[a] @ self._S[b]) >= SUBJECT_MATCH)

    def activation(self, cos: torch.Tensor, a: Hashable, b: Hashable, neurons: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """How strongly fact a's rows fire fact b's neurons at the cosines ``cos`` of their keys; ``neurons``
        which of b's neurons each cosine's is (None: all of them, in order, along the last dimension)."""
        if self.tau_named and self._names(a, b):
            full = self.full_of(b)
            if isinstance(full, torch.Tensor) and neurons is not None:
                full = full[neurons]
            return named_gate(cos, self.tau_named, self.prime, full)
        return gate(cos, self.threshold(a, b))

    def full_of(self, key: Hashable) -> float | torch.Tensor:
        """The cosine from which each of fact ``key``'s neurons fires at its whole value where its subject is
        named: ``full`` for those whose row opens an answer, 1 for the others ((T_f,) float64), or ``full``
        alone where every row opens one (decided once, by ``add``)."""
        return self._full[key]

    def _rule(self, row_has: torch.Tensor, neuron_has: torch.Tensor, same_subject: torch.Tensor) -> torch.Tensor:
        """With subject gating, the cosine above which a row fires a neuron, elementwise over bool
        tensors (float64): tau_unknown for the neuron of a fact with no subject key, tau_named where
        the row names the neuron's subject (both facts' subject keys match; with a prime, the lower
        PRIME_FROM), else tau."""
        named = min(self.tau_named, PRIME_FROM) if self.prime else self.tau_named
        tau, named, unknown = (torch.tensor(t, dtype=torch.float64) for t in (self.tau, named, self.tau_unknown))
        return torch.where(neuron_has, torch.where(row_has & same_subject, named, tau), unknown)

    def add(self, key: Hashable, X_plain: torch.Tensor, R_rows: torch.Tensor, significance: torch.Tensor,
            subject_key: torch.Tensor | None = None, answer_states: torch.Tensor | None = None,
            subject_mean: torch.Tensor | None = None, openings: torch.Tensor | None = None,
            targets: torch.Tensor | None = None, recent: torch.Tensor | None = None) -> None:
        """A fact by its plain pass's MLP inputs X_plain (T, N), the residual each row needs R_rows
        (T, N), its rows' significance (T,), its subject key (N_s,) if it has one, with an answer
        gate its rows' answer states (T, N) (memory.answer_gate), with the subject-centered gate its
        subject's mean MLP input (N,) (memory.subject_center), and which rows open an answer (T,) bool
        (None: all; ``full``); with a refractory span, each row's target (T,) and last input tokens
        (T, >= span) (memory.refractory; None: not recorded, the rule leaves the fact alone); rows of
        weight 0 are dropped."""
        if key in self._K:
            raise KeyError(f"fact {key!r} is already in the gated memory")
        if X_plain.shape != R_rows.shape or X_plain.shape[1] != self.width or significance.shape != X_plain.shape[:1]:
            raise ValueError(f"keys {tuple(X_plain.shape)}, residuals {tuple(R_rows.shape)} and significance "
                             f"{tuple(significance.shape)} do not fit width {self.width}")
        if self.answer_tau and (answer_states is None or answer_states.shape != X_plain.shape):
            raise ValueError(f"an answer gate needs the answer state of each of the fact's rows, {tuple(X_plain.shape)}")
        if self.subject_centered and subject_key is not None and (subject_mean is None or subject_mean.shape != (self.width,)):
            raise ValueError(f"the subject-centered gate needs the subject mean ({self.width},) of a fact with a subject key")
        if openings is not None and openings.shape != significance.shape:
            raise ValueError(f"openings {tuple(openings.shape)} must give one flag per row, {tuple(significance.shape)}")
        if self.refractory and recent is not None and (
                targets is None or targets.shape != significance.shape or recent.shape[0] != significance.shape[0]
                or recent.shape[1] < self.refractory):
            raise ValueError(f"the refractory rule needs each row's target and at least its last {self.refractory} "
                             f"input tokens, for {significance.shape[0]} rows")
        keep = significance > 0
        if self.refractory:
            if recent is None:  # rows recorded before the rule: no targets, and last tokens unknown
                recent = torch.full((keep.shape[0], self.refractory), NO_TOKEN, dtype=torch.int64)
                targets = torch.full(keep.shape, NO_TOKEN, dtype=torch.int64)
            recent = recent[keep][:, -self.refractory:].long()
            self._targets[key], self._recent[key] = refractory_targets(targets[keep], recent, self.refractory), recent
        opens = None if openings is None else openings[keep].bool()
        self._full[key] = self.full if self.full >= 1.0 or opens is None or bool(opens.all()) else \
            torch.where(opens, self.full, 1.0).double()
        if self.subject_centered and subject_key is not None:
            self._M[key], self._X[key] = subject_mean.float(), X_plain[keep].float()
        if self.answer_tau:
            self._F[key] = answer_keys(answer_states[keep], self.answer_mean)
        K = unit_rows(X_plain[keep])
        if subject_key is not None:
            self._S[key] = unit_rows(subject_key[None])[0]
        if self._bank.keys.count:  # the pairs of its keys and every other fact's where either fires the other
            held, fact = self._bank.keys.rows, self._bank.fact.rows
            thresholds = self._pair_thresholds(key)[fact]
            # Candidates from one product with every key held (T, J); its rounding depends on how many
            # keys are held, so each candidate's cosine is then taken alone, as it would be were no
            # other fact held: undoing a fact leaves what never having learned it leaves, bit for bit.
            i, j = torch.nonzero(K @ held.T > thresholds - PAIR_SLACK, as_tuple=True)
            cos = (K[i] * held[j]).sum(1)
            fires = cos > thresholds[j]
            i, j, cos = i[fires], j[fires], cos[fires]
            fact_of = fact[j]
            for position in fact_of.unique().tolist():
                at = fact_of == position
                self._near[(key, self._keys[position])] = torch.stack(
                    [i[at].double(), self._bank.row.rows[j[at]].double(), cos[at].double()], 1)
        self._bank.append(K, self._S.get(key))
        self._keys.append(key)
        self._K[key], self._R[key], self._w[key] = K, R_rows[keep].double(), significance[keep].double()

    def remove(self, key: Hashable) -> None:
        if key not in self._K:
            raise KeyError(f"fact {key!r} is not in the gated memory")
        self._keys.remove(key)
        for store in (self._K, self._R, self._w, self._S, self._F, self._M, self._X, self._full, self._targets,
                      self._recent):
            store.pop(key, None)
        self._near = {pair: e for pair, e in self._near.items() if key not in pair}
        self._bank.clear()
        for k in self._keys:
            self._bank.append(self._K[k], self._S.get(k))

    def _pair_thresholds(self, key: Hashable) -> torch.Tensor:
        """For every fact held, in order, the lower of the cosines above which it fires fact ``key``'s
        neurons and ``key`` fires its (``threshold`` both ways, for all of them at once) -> (F,)."""
        F = len(self._keys)
        if not self.tau_named:
            return torch.full((F,), self.tau)
        has = self._bank.has_subject.rows
        new_has = torch.tensor(key in self._S).expand(F)
        match = torch.zeros(F, dtype=torch.bool)
        if key in self._S and self._bank.subjects is not None:  # a zero row (no subject key) matches nothing
            match = self._bank.subjects.rows @ self._S[key] >= SUBJECT_MATCH
        # float32, as the python numbers ``threshold`` gives are when compared with float32 cosines
        return torch.minimum(self._rule(new_has, has, match), self._rule(has, new_has, match)).float()

    def rename(self, key: Hashable, new: Hashable) -> None:
        """Give a fact its durable key (e.g. the ledger's edit id), keeping its place."""
        if new in self._K:
            raise KeyError(f"fact {new!r} is already in the gated memory")
        self._keys[self._keys.index(key)] = new
        for store in (self._K, self._R, self._w, self._S, self._F, self._M, self._X, self._full, self._targets,
                      self._recent):
            if key in store:
                store[new] = store.pop(key)
        self._near = {tuple(new if k == key else k for k in pair): e for pair, e in self._near.items()}

    def rows_of(self, key: Hashable) -> slice:
        """Where fact ``key``'s neurons are in what ``solve`` gives (with the facts held now)."""
        start = 0
        for k in self._keys:
            if k == key:
                return slice(start, start + self._K[k].shape[0])
            start += self._K[k].shape[0]
        raise KeyError(f"fact {key!r} is not in the gated memory")

    def solve(self) -> GatedNeurons:
        """The neurons of every active fact, values solved group by group."""
        if not self._keys:
            return GatedNeurons(torch.zeros(0, self.width), torch.zeros(0, self.width), self._taus(), tau_named=self.tau_named,
                                **self._answers(), prime=self.prime, **self._centered(None), full=self.full,
                                **self._refractories())
        offsets, start = {}, 0
        for key in self._keys:
            offsets[key], start = start, start + self._K[key].shape[0]
        K = torch.cat([self._K[k] for k in self._keys])
        R = torch.cat([self._R[k] for k in self._keys])
        w = torch.cat([self._w[k] for k in self._keys])
        A = {}  # (row, neuron) -> activation, off the diagonal (the diagonal is 1)
        for key in self._keys:  # within a fact
            if key in self._M:
                continue  # centered on its subject's mean, below
            cos, tau = self._K[key] @ self._K[key].T, self.threshold(key, key)
            i, j = torch.nonzero(cos > tau, as_tuple=True)
            o, fired = offsets[key], self.activation(cos[i, j], key, key, j).tolist()
            A.update({(o + a, o + b): v for a, b, v in zip(i.tolist(), j.tolist(), fired) if a != b})
        for (ka, kb), e in self._near.items():  # between facts, each way above the threshold of the neuron fired
            s, t, cos = offsets[ka] + e[:, 0].long(), offsets[kb] + e[:, 1].long(), e[:, 2]
            for row, neuron, src, dst in ((s, t, ka, kb), (t, s, kb, ka)):
                if dst in self._M and self._names(src, dst):
                    continue  # centered on the neuron's subject mean, below
                fires = cos > self.threshold(src, dst)
                # float32 cosines, as a fact's own pairs' are: the same values whichever way they are solved
                fired = self.activation(cos[fires].float(), src, dst, neuron[fires] - offsets[dst]).tolist()
                A.update(zip(zip(row[fires].tolist(), neuron[fires].tolist()), fired))
        for ka, kb in self._centered_pairs():  # rows that name a neuron's subject, by the centered cosine
            cos = centered_keys(self._X[ka], self._M[kb]) @ centered_keys(self._X[kb], self._M[kb]).T
            fired = named_gate(cos, self.tau_named, self.prime, self.full_of(kb))
            i, j = torch.nonzero(fired > 0, as_tuple=True)
            A.update({(offsets[ka] + a, offsets[kb] + b): v
                      for a, b, v in zip(i.tolist(), j.tolist(), fired[i, j].tolist()) if ka != kb or a != b})
        pairs = torch.tensor(list(A), dtype=torch.int64).reshape(-1, 2)
        if self.answer_tau and len(pairs):  # a row fires a neuron only where their answer keys match too
            F = torch.cat([self._F[k] for k in self._keys])
            A, pairs = kept_pairs(A, pairs, (F[pairs[:, 0]] * F[pairs[:, 1]]).sum(1) >= self.answer_tau)
        refractories = self._refractories()
        if self.refractory and len(pairs):  # nor where the row's last tokens hold the neuron's target
            recent = torch.cat([self._recent[k] for k in self._keys])
            A, pairs = kept_pairs(A, pairs, ~holds_target(recent[pairs[:, 0]],
                                                          refractories["refractory_targets"][pairs[:, 1]]))
        members_of = groups(K.shape[0], pairs)
        group_of = {m: g for g, members in enumerate(members_of) for m in members}
        entries: dict[int, list[tuple[int, int, float]]] = {}
        for (s, t), v in A.items():
            entries.setdefault(group_of[s], []).append((s, t, v))
        V = R.clone()  # a lone neuron (the common case) fires 1 at its own row and nowhere else: v = r
        for g, members in enumerate(members_of):
            if len(members) == 1:
                continue
            local = {m: n for n, m in enumerate(members)}
            Ag = torch.eye(len(members), dtype=torch.float64)
            for s, t, v in entries[g]:
                Ag[local[s], local[t]] = v
            V[members] = solve_values(Ag, R[members], w[members], self.ridge)
        subject_keys, subject_of = self._subjects()
        return GatedNeurons(K, V.float(), self._taus(), subject_keys, subject_of, self.tau_named, **self._answers(),
                            prime=self.prime, **self._centered(subject_of), full=self._fulls(), **refractories)

    def _refractories(self) -> dict:
        """GatedNeurons' refractory fields: the span and every neuron's refractory target; none without."""
        if not self.refractory:
            return {}
        targets = torch.cat([self._targets[k] for k in self._keys]) if self._keys else torch.zeros(0, dtype=torch.int64)
        return {"refractory": self.refractory, "refractory_targets": targets}

    def _centered_pairs(self) -> list[tuple[Hashable, Hashable]]:
        """The (row fact, neuron fact) pairs, in the facts' order, where the row names the neuron's subject
        and the neuron reads the centered cosine: each fact with itself, and facts whose subject keys match,
        both ways. Candidates come from one product of the subject keys, each confirmed alone (_names), so
        which pairs are found does not depend on the other facts held."""
        held = [k for k in self._keys if k in self._M]
        if not held:
            return []
        S = torch.stack([self._S[k] for k in held])
        a, b = torch.nonzero(S @ S.T >= SUBJECT_MATCH - PAIR_SLACK, as_tuple=True)
        return [(held[i], held[j]) for i, j in zip(a.tolist(), b.tolist()) if self._names(held[i], held[j])]

    def _centered(self, subject_of: torch.Tensor | None) -> dict:
        """GatedNeurons' subject-centered fields: each subject's mean (in ``_subjects``' order), every
        neuron's centered key (zero rows for facts with no subject key) and constants, given each neuron's
        subject (``_subjects``; None: none); none without."""
        if not self.subject_centered:
            return {}
        with_subject = [k for k in self._keys if k in self._S]
        means = torch.stack([self._M[k] for k in with_subject]) if with_subject else torch.zeros(0, self.width)
        keys = torch.cat([centered_keys(self._X[k], self._M[k]) if k in self._M else torch.zeros(self._K[k].shape[0], self.width)
                          for k in self._keys]) if self._keys else torch.zeros(0, self.width)
        subject_of = torch.full((keys.shape[0],), -1, dtype=torch.int64) if subject_of is None else subject_of
        return {"subject_means": means, "centered_keys": keys,
                "centered_offsets": centered_offsets(means, keys, subject_of)}

    def _fulls(self) -> float | torch.Tensor:
        """``full`` for every neuron, or per neuron (J,) where some rows do not open an answer (full_of)."""
        fulls = [self.full_of(k) for k in self._keys]
        if all(not isinstance(f, torch.Tensor) for f in fulls):
            return self.full
        return torch.cat([f if isinstance(f, torch.Tensor) else torch.full((self._K[k].shape[0],), f, dtype=torch.float64)
                          for k, f in zip(self._keys, fulls)])

    def _answers(self) -> dict:
        """GatedNeurons' answer-gate fields: every row's answer key, their mean and the threshold; none without."""
        if not self.answer_tau:
            return {}
        keys = torch.cat([self._F[k] for k in self._keys]) if self._keys else torch.zeros(0, self.width)
        return {"answer_keys": keys, "answer_mean": self.answer_mean, "answer_tau": self.answer_tau}

    def _taus(self) -> float | torch.Tensor:
        """The threshold of every neuron away from its subject: tau, or per neuron (J,) where facts with
        no subject key fire above another (tau_unknown)."""
        if not self.tau_named or self.tau_unknown == self.tau or not self._keys:
            return self.tau
        return torch.cat([torch.full((self._K[k].shape[0],), self.tau if k in self._S else self.tau_unknown)
                          for k in self._keys])

    def _subjects(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The subject keys (S, N_s) of the facts that have one and each neuron's index into them (J,)
        (-1: none); (None, None) without subject gating."""
        if not self.tau_named or not self._S:
            return None, None
        with_subject = [k for k in self._keys if k in self._S]
        index = {k: i for i, k in enumerate(with_subject)}
        subject_of = torch.cat([torch.full((self._K[k].shape[0],), index.get(k, -1), dtype=torch.int64)
                                for k in self._keys])
        return torch.stack([self._S[k] for k in with_subject]), subject_of


class GatedPatch(nn.Module):
    """The neurons as a module on one MLP: a forward hook adds ``neurons.output(x)`` to its output;
    with subject gating, a hook on the subject layer tells it which subjects each position has seen
    (memory.subject_gate.SubjectPresence); with answer gating, a hook on its MLP norm gives the
    answer state (memory.answer_gate.AnswerReader); with the refractory rule, hooks on the embeddings and
    the first layer give the last input tokens (memory.refractory.RecentTokens)."""

    def __init__(self, mlp: nn.Module, neurons: GatedNeurons, model: nn.Module | None = None):
        super().__init__()
        if (neurons.subject_gated or neurons.answer_gated or neurons.refractory_gated) and model is None:
            raise ValueError("subject-, answer-gated or refractory neurons need the model, to see where their subjects "
                             "are named, what it is about to answer and which tokens it has read")
        self.neurons = neurons
        self.presence = SubjectPresence(model, neurons.subject_keys) if neurons.subject_gated else None
        self.answers = AnswerReader(model, mlp) if neurons.answer_gated else None
        self.tokens = RecentTokens(model, neurons.refractory) if neurons.refractory_gated else None
        self._handle = mlp.register_forward_hook(self._add)

    def _add(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x, named = args[0], None
        if self.presence is not None:
            named = self.presence.named
            if named is None or named.shape[:-1] != x.shape[:-1]:
                raise RuntimeError("the subject layer did not run before the gated MLP in this forward pass")
        answer = self.answers.state(output) if self.answers is not None else None
        recent = self.tokens.recent if self.tokens is not None else None
        if recent is not None and recent.shape[:-1] != x.shape[:-1]:
            raise RuntimeError("the first layer did not run before the gated MLP in this forward pass")
        return output + self.neurons.output(x, named, answer, recent)

    def remove(self) -> None:
        self._handle.remove()
        for reader in (self.presence, self.answers, self.tokens):
            if reader is not None:
                reader.remove()


_PATCHES: weakref.WeakKeyDictionary[nn.Module, GatedPatch] = weakref.WeakKeyDictionary()  # mlp -> its patch


def gated_parameter(mlp_name: str) -> str:
    """The name the ledger and the audit give the gated neurons of an MLP (no such parameter exists in
    the stock model: they are added to it)."""
    return f"{mlp_name}.gated"


def installed_patch(mlp: nn.Module) -> GatedPatch | None:
    return _PATCHES.get(mlp)


def install(mlp: nn.Module, neurons: GatedNeurons, model: nn.Module | None = None) -> GatedPatch:
    """Put ``neurons`` on ``mlp`` (of ``model``, which subject-gated neurons need) in place of any
    installed before (refusing non-finite values)."""
    if not neurons.is_finite():
        raise ValueError("refusing to install gated neurons with non-finite values")
    uninstall(mlp)
    weight = next(mlp.parameters(), None)
    patch = GatedPatch(mlp, neurons.to(weight.device) if weight is not None else neurons, model)
    _PATCHES[mlp] = patch
    return patch


def uninstall(mlp: nn.Module) -> None:
    patch = _PATCHES.pop(mlp, None)
    if patch is not None:
        patch.remove()


@contextmanager
def uninstalled(mlp: nn.Module, model: nn.Module | None = None):
    """A context in which ``mlp`` (of ``model``) runs without the neurons installed on it, if any (the
    base model's MLP); they are put back after."""
    patch = _PATCHES.get(mlp)
    uninstall(mlp)
    try:
        yield
    finally:
        if patch is not None:
            install(mlp, patch.neurons, model)
