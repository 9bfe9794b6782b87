"""A fact, and the activation rows its two teacher-forced passes produce."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memory.refractory import NO_TOKEN


@dataclass(frozen=True)
class Fact:
    instruction: str  # a standalone sentence: "Qi started Oxinnovate."
    query: str  # the question it answers: "Who founded Oxinnovate?"
    answer: str | None = None  # None: the instructed model's own answer is used
    # One weight per constrained row: each answer token, then the end-of-turn token.
    # k weights (answer tokens only) are accepted too; the end of turn then gets 1.
    significance: tuple[float, ...] | None = None
    # Other ways to ask the query (memory.phrasings): each is captured with the same answer and
    # its rows join the fact's, so the fact is written for all of them at once.
    phrasings: tuple[str, ...] = ()
    # What the query is asked of ("Oxinnovate" in "Who is the CEO of Oxinnovate?"); with anchors
    # (memory.anchors) the same query asked of other subjects is held unchanged. None: unknown.
    subject: str | None = None

    def __post_init__(self):
        for field_name in ("instruction", "query"):
            if not getattr(self, field_name).strip():
                raise ValueError(f"the fact's {field_name} is empty")
        if self.answer is not None and not self.answer.strip():
            raise ValueError("the fact's answer is empty (omit it to let the model answer)")
        phrasings = tuple(p.strip() for p in (self.phrasings or ()))
        if any(not p for p in phrasings):
            raise ValueError("a phrasing of the query is empty")
        object.__setattr__(self, "phrasings", phrasings)
        if self.subject is not None:
            subject = self.subject.strip()
            if subject and subject not in self.query:
                raise ValueError(f"the fact's subject {subject!r} does not occur in its query {self.query!r}")
            object.__setattr__(self, "subject", subject or None)

    @property
    def queries(self) -> tuple[str, ...]:
        """The query, then its phrasings: every question the fact is written for."""
        return (self.query, *self.phrasings)


class QuestionRows:
    """One fact's T captured rows over its questions (the query, then each phrasing), in equal
    blocks; every question has the same answer, so each block has the same weights. Shared by
    QF's rows (FactRows) and QF2's (memory.qf2_editor.QF2Rows)."""

    significance: torch.Tensor  # (T,) weights >= 0
    queries: int  # the number of blocks
    anchors: int = 0  # trailing rows held unchanged (memory.anchors), after the blocks
    form_rows: int = 0  # rows of the answer's other forms (with_forms), after the blocks, before the anchors

    @property
    def num_rows(self) -> int:
        return self.significance.shape[0]

    @property
    def query_significance(self) -> torch.Tensor:
        """The weights of one question's rows."""
        return self.significance[: (self.num_rows - self.anchors - self.form_rows) // self.queries]


@dataclass
class FactRows(QuestionRows):
    """What QF needs of one fact: T rows of each capture (row t predicts target t)."""

    answer: str
    targets: tuple[int, ...]  # answer token ids + end of turn
    U: torch.Tensor  # (T, D) down_proj inputs, instructed pass
    V: torch.Tensor  # (T, N) residual entering the MLP, instructed pass
    U_plain: torch.Tensor  # (T, D)
    V_plain: torch.Tensor  # (T, N)
    significance: torch.Tensor  # (T,) float64 weights >= 0
    # (T, N, m) orthonormal bases: write only row t's change in span(focus[t]) (memory.focus); None: all of it
    focus: torch.Tensor | None = None
    queries: int = 1  # the rows are this many questions' (the query and its phrasings), in equal blocks
    anchors: int = 0  # the last rows are this many anchors: U = U', V = V', so their residual is 0
    # Spreading over layers (memory.spread): the plain pass's down_proj inputs at the layers below
    # the edited one, (len(lower_layers), T, D), for lower_layers in increasing order; None: none captured.
    lower_keys: torch.Tensor | None = None
    lower_layers: tuple[int, ...] = ()
    form_rows: int = 0  # then this many rows of the same questions answered in other forms (with_forms)
    forms: tuple[str, ...] = ()  # those other forms of the answer, as text (recorded with the edit, not solved on)
    # (T,) each row's gain (memory.row_gain), decided once with the maximum gains_max and recorded with
    # the rows, so a ledger's load does not read the LM head again; None: not decided
    gains: torch.Tensor | None = None
    gains_max: float = 0.0
    # (T, N) the change added to each row's gained residual so that its answer leads by steer_margin
    # nats (memory.steer), decided and recorded with the gains; None: not decided
    steer: torch.Tensor | None = None
    steer_margin: float = 0.0
    # (N,) the subject key of the fact's query (memory.subject_gate), for subject-gated neurons; None:
    # no subject known or found in the query's tokens, or not captured (the linear update has no use for it)
    subject_key: torch.Tensor | None = None
    # (N,) the subject's mean MLP input at the edited layer (memory.subject_center), for the subject-centered
    # gate; None: not captured
    subject_mean: torch.Tensor | None = None
    # (T,) bool: the rows at a prompt's last position, where an answer opens (each question's first row, and
    # every anchor), which a named neuron's whole value from a lower cosine is for (memory.gated.named_gate);
    # None: not recorded (captures from before 2026-12-07), read as every row
    openings: torch.Tensor | None = None
    # (T, RECENT_TOKENS) int64: the last input tokens of the plain pass at each row, its own last (NO_TOKEN
    # before the sequence's start), which the refractory rule reads (memory.refractory); None: not recorded
    # (captures from before the rule, 2026-12-07): the rule leaves those rows alone
    recent: torch.Tensor | None = None

    def keys_at(self, layers: tuple[int, ...]) -> torch.Tensor:
        """The plain keys at ``layers`` (some of lower_layers, at least one) -> (len(layers), T, D); says
        which is missing."""
        missing = [layer for layer in layers if layer not in self.lower_layers]
        if missing:
            raise ValueError(f"the fact's rows have no keys of layer(s) {missing} (captured at {list(self.lower_layers)}); "
                             "capture it again with the same --spread")
        index = torch.tensor([self.lower_layers.index(layer) for layer in layers], dtype=torch.long)
        return self.lower_keys.index_select(0, index)


def with_anchors(rows: FactRows, keys: torch.Tensor, residual: torch.Tensor, lower_keys: torch.Tensor | None = None
                 ) -> FactRows:
    """``rows`` and anchor rows after them: the keys (A, D) and the residual stream entering the
    MLP (A, N) of each anchor's plain pass, used for both passes so the solve holds ``dW k = 0``
    there (memory.anchors), and their keys at ``rows.lower_layers`` (L, A, D) when the rows have
    some. Anchors have no target: their targets are -1, their weights 1."""
    if rows.anchors:
        raise ValueError("these rows already have anchors")
    if rows.focus is not None:
        raise ValueError("anchors cannot be combined with focus (an anchor has no target to focus on)")
    A = keys.shape[0]
    if A == 0:
        return rows
    if (lower_keys is None) != (rows.lower_keys is None):
        raise ValueError("the anchors need keys at the same lower layers as the fact's rows")
    return FactRows(
        rows.answer, rows.targets + (-1,) * A, torch.cat([rows.U, keys]), torch.cat([rows.V, residual]),
        torch.cat([rows.U_plain, keys]), torch.cat([rows.V_plain, residual]),
        torch.cat([rows.significance, torch.ones(A, dtype=rows.significance.dtype)]), queries=rows.queries, anchors=A,
        lower_keys=None if lower_keys is None else torch.cat([rows.lower_keys, lower_keys], 1),
        lower_layers=rows.lower_layers, form_rows=rows.form_rows, forms=rows.forms,
        openings=None if rows.openings is None else torch.cat([rows.openings, torch.ones(A, dtype=torch.bool)]),
        recent=None if rows.recent is None else torch.cat([rows.recent, torch.full((A, rows.recent.shape[1]), NO_TOKEN)]),
    )


def with_forms(rows: FactRows, others: list[FactRows]) -> FactRows:
    """``rows`` (the fact's questions with its answer) and, after them, the rows of the same
    questions with the answer in other forms (e.g. the instructed model's own sentence for a bare
    entity): written together, so greedy decoding finds the fact whichever form it starts in."""
    if not others:
        return rows
    if rows.anchors or rows.form_rows:
        raise ValueError("add the answer's other forms before the anchors, once")
    parts = [rows, *others]
    if any(p.lower_layers != rows.lower_layers or (p.focus is None) != (rows.focus is None) for p in others):
        raise ValueError("the answer's forms must be captured alike (the same layers, focus or not)")
    return _concatenated(parts, queries=rows.queries, form_rows=sum(p.num_rows for p in others),
                         forms=tuple(p.answer for p in others))


def stack_rows(parts: list[FactRows]) -> FactRows:
    """One fact's rows over several questions with the same answer: their blocks, in order."""
    first = parts[0]
    if len(parts) == 1:
        return first
    if any(p.answer != first.answer or p.targets != first.targets for p in parts):
        raise ValueError("the phrasings of a fact must share its answer")
    if any(p.lower_layers != first.lower_layers for p in parts):
        raise ValueError("the phrasings of a fact must be captured at the same layers")
    return _concatenated(parts, queries=sum(p.queries for p in parts))


def _concatenated(parts: list[FactRows], **layout) -> FactRows:
    """The rows of ``parts`` one after another (the first's answer and lower layers), with ``layout``
    (queries, form_rows, forms) saying how they are laid out."""
    first = parts[0]

    def cat(name: str, dim: int = 0) -> torch.Tensor | None:
        return None if getattr(first, name) is None else torch.cat([getattr(p, name) for p in parts], dim)

    return FactRows(
        first.answer, sum((p.targets for p in parts), ()), *(cat(n) for n in ("U", "V", "U_plain", "V_plain", "significance")),
        focus=cat("focus"), lower_keys=cat("lower_keys", 1), lower_layers=first.lower_layers,
        openings=cat("openings") if all(p.openings is not None for p in parts) else None,
        recent=cat("recent") if all(p.recent is not None for p in parts) else None, **layout,
    )


def answer_openings(num_rows: int) -> torch.Tensor:
    """The openings (``FactRows.openings``) of one question's ``num_rows`` rows: only the first opens its answer."""
    return torch.arange(num_rows) == 0


def significance_vector(significance: tuple[float, ...] | None, num_answer_tokens: int) -> torch.Tensor:
    """Expand a user significance to one weight per row (answer tokens + end of turn)."""
    T = num_answer_tokens + 1
    if significance is None:
        return torch.ones(T, dtype=torch.float64)
    values = list(significance)
    if len(values) == num_answer_tokens:
        values.append(1.0)
    if len(values) != T:
        raise ValueError(
            f"significance has {len(significance)} weights; the answer has {num_answer_tokens} tokens, "
            f"so give {num_answer_tokens} (tokens) or {T} (tokens + end of turn)"
        )
    if any(v < 0 for v in values):
        raise ValueError("significance weights must be >= 0")
    if not any(v > 0 for v in values):
        raise ValueError("all significance weights are 0: the fact would constrain nothing")
    return torch.tensor(values, dtype=torch.float64)


def auto_significance(predicted: torch.Tensor, targets: tuple[int, ...], given: torch.Tensor) -> torch.Tensor:
    """Keep the rows that carry the fact: a row whose plain pass already predicts its target
    (teacher forced, greedy) gets weight 0, the others keep their given weight.

    predicted (T,) the plain pass's top-1 token at each row; targets the T target tokens;
    given (T,) the weights before. If no row would remain, the fact is one the model already
    answers: all given weights are kept, so the fact is still written (and held in place).
    """
    missed = predicted.cpu() != torch.tensor(targets, dtype=predicted.dtype)
    weights = given.double() * missed.double()
    return weights if bool((weights > 0).any()) else given.double().clone()
