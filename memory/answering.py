"""What every editor shares: the loaded model, its settings, and asking it questions.

An editor (memory.consolidate.QFEditor, memory.qf2_editor.QF2Editor) writes facts into one
matrix; before it can, it asks the model the fact's query with the instruction in context (the
answer it will write, unless one is given) and, after, closed-book (the verification).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field, replace

from memory.fact import Fact
from memory.generate import Answer, greedy_answer, stop_ids
from memory.loading import LoadedModel
from memory.phrasings import generate_phrasings
from memory.prompts import Pass, instructed_system
from memory.qf import DEFAULT_RIDGE
from memory.qf2 import DEFAULT_QF2_LR, QF2_RULES


class ConsolidationError(ValueError):
    """The fact cannot be consolidated; the weights were left as they were."""


@dataclass(frozen=True)
class EditorConfig:
    layer: int | None = None  # QF: None = the architecture default (the last layer); QF2: the converted one
    ridge: float = DEFAULT_RIDGE  # relative ridge of the QF solve, see memory.qf
    # QF solver options (issue 7); the defaults are the best combination measured (docs/RESULTS.md,
    # "Solver options"); PAPER_RULE below gives the paper's exact rule.
    preserve: float = 10.0  # strength p of the K0-preserving metric (0 = the paper's identity norm), memory.qf
    gain: float = 1.5  # the residual to write is gain * R (1 = the instructed pass exactly), memory.qf
    # > 0 (>= 1), at the last layer: each row's own gain, up to this, read off the LM head (instead of gain),
    # memory.row_gain; None: DEFAULT_ROW_GAIN with gated neurons at the last layer, else 0 (``with_defaults_decided``)
    row_gain: float | None = None
    # > 0, with row gains: where a row's gained change leaves its answer less than this many nats ahead of
    # every other token, add the least change that puts it so far ahead, read off the LM head (memory.steer); 0 = off;
    # None: DEFAULT_STEER with row gains, else 0
    steer: float | None = None
    focus: int = 0  # at the last layer: keep only the change of the target's and top-k tokens' logits, memory.focus
    auto_significance: bool = False  # drop rows the plain pass already predicts, memory.fact.auto_significance
    condition: float = 0.0  # cap on the row system's condition number, raising the ridge (0 = none), memory.qf
    # with a given answer, also write the instructed model's own answer to the same questions when it
    # names the given one (a sentence for a bare entity), memory.consolidate.QFEditor.other_forms
    answer_forms: bool = False
    phrasings: int = 0  # rephrasings of a new fact's query the model writes, learned with it, memory.phrasings
    contexts: int = 0  # the query also after this many short unrelated sentences, learned with it, memory.contexts
    anchors: int = 0  # the query asked of this many other subjects, held unchanged (needs the fact's subject), memory.anchors
    # also hold the this many shipped questions of fact whose answering key is nearest the fact's, memory.near_questions
    near_questions: int = 0
    # > 0: the anchors are not held rows but a soft term of the metric of this weight b, memory.soft_anchors
    soft_anchors: float = 0.0
    spread: int = 1  # write each fact over this many layers up to the edited one (1 = that layer alone), memory.spread
    keys_data: str | None = None  # chat rows (JSONL) whose exchanges add keys to the preserving metric, memory.preserve
    # weight w of the factual prompts' question keys in the preserving metric (0 = none), memory.preserve
    question_keys: float = 1.0
    # > 0: write each fact row with a new neuron that fires only above this cosine with the row's key,
    # instead of changing down_proj (0 = the linear update), memory.gated; None: DEFAULT_GATE, unless an
    # option only the linear update has is set (spread, soft anchors, near questions): then 0
    gate: float | None = None
    # > 0, with gated neurons: a fact's neurons fire above this lower cosine once its subject has been
    # named in the context (memory.subject_gate); 0 = off; None: DEFAULT_SUBJECT_GATE with the default gate, else 0
    subject_gate: float | None = None
    # > 0, with a subject gate: where its subject has been named a fact's neurons also fire weakly below the
    # subject gate, at most this share of their value, growing with the cosine above memory.gated.PRIME_FROM
    # (memory.gated.named_gate); 0 = off
    subject_prime: float = 0.0
    # with a subject gate: where its subject has been named a neuron compares the MLP input and its key both
    # centered on the subject's mean (the subject gate is then a threshold on that cosine), memory.subject_center
    subject_centered: bool = False
    # > 0, with a subject gate: where its subject has been named the neuron of a row where an answer opens fires
    # at its whole value from this cosine up (the ramp from the subject gate reaching 1 there instead of at
    # cosine 1; the rows within the answer keep the ramp; meant for the subject-centered gate, whose
    # paraphrases' cosines are low), memory.gated.named_gate and GatedMemory.full_of; 0 = off
    subject_full: float = 0.0
    # > 0, with gated neurons: a neuron does not fire where its target token is among the last this many input
    # tokens (the refractory span, at most memory.refractory.RECENT_TOKENS), memory.refractory; 0 = off;
    # None: DEFAULT_REFRACTORY with gated neurons, else 0
    refractory: int | None = None
    # > 0, with gated neurons at the last layer: a neuron fires only where the base model's answer state (the
    # LM head's input, centered) has at least this cosine with its row's (memory.answer_gate); 0 = off;
    # None: DEFAULT_ANSWER_GATE with gated neurons at the last layer, else 0
    answer_gate: float | None = None
    lr: float = DEFAULT_QF2_LR  # the QF2 Hebbian learning rate (paper and delta rules), see memory.qf2
    # QF2: "solve" (joint minimum-norm solve; the best measured, docs/QF2.md), "paper" (lr (y* - 0.5) x^T)
    # or "delta" (lr (y* - the plain firing) x^T), memory.qf2
    qf2_rule: str = "solve"
    system: str | None = None  # the chat's system prompt; None = the chat template's default
    max_answer_tokens: int = 64  # cap for the instructed model's own answer
    verify_tokens: int = 64  # cap for the closed-book verification answer


# The default combination (docs/RESULTS.md, "Gate 0.95 with subject gate 0.1 at scale, and the new default"):
# key-gated neurons that fire only where the fact's subject has been named in the context (gate 1), and
# there above cosine 0.1 (facts with no subject: above DEFAULT_THRESHOLD 0.85 everywhere,
# memory.gated.unknown_subject_threshold), each row's gain read off the LM head up to 4. It reaches the
# rewordings of a question that name its subject and meets every target of issue 7 after 1,000
# CounterFact and all 500 zsRE edits on the default model (the answer gate on for chat facts, off for
# plain completions: with_form_defaults), where subject gate 0.85 (the default before 2026-12-07)
# reached none of CounterFact's paraphrases; its price is the subject leak, other questions about an
# edited subject answered with the new fact. Gate 1 rather than 0.95 leaves the questions about other
# subjects as they were ("What is my son's name?" after "My daughter's name is Lina.").
DEFAULT_GATE = 1.0
DEFAULT_ROW_GAIN = 4.0
# With row gains, the least change that puts each answer 1 nat ahead where the gained change does not
# (docs/RESULTS.md, "Steering at 1,000 edits").
DEFAULT_STEER = 1.0
DEFAULT_SUBJECT_GATE = 0.1
# With gated neurons at the last layer, a neuron fires only where the base model's centered answer state is
# within cosine 0.8 of its row's (docs/RESULTS.md, "The answer gate, built").
DEFAULT_ANSWER_GATE = 0.8
# With gated neurons, a neuron does not fire where its target is among the last 8 input tokens (docs/RESULTS.md,
# "The refractory rule"): no greedy answer repeats its target, and no teacher-forced score moves.
DEFAULT_REFRACTORY = 8


def with_defaults_decided(config: EditorConfig, last_layer: bool) -> EditorConfig:
    """``config`` with its automatic settings (None) decided for an editor at the model's last layer
    or not: the gate unless an option of the linear update alone is set; row gains with the gate
    where the LM head reads the edited layer (the last, alone), and steering with the row gains. Given
    settings are kept as they are. The answer gate comes with gated neurons at the last layer, the refractory
    rule with gated neurons."""
    gate, default_gate = config.gate, config.gate is None
    if gate is None:
        gate = 0.0 if config.spread > 1 or config.soft_anchors or config.near_questions else DEFAULT_GATE
    row_gain = config.row_gain
    if row_gain is None:
        row_gain = DEFAULT_ROW_GAIN if gate and last_layer and config.spread == 1 else 0.0
    subject_gate = config.subject_gate
    if subject_gate is None:  # the default gate (or gate 1, which needs one) comes with its subject gate; a
        # --gate below 1 given is that gate alone
        subject_gate = DEFAULT_SUBJECT_GATE if (default_gate or gate == 1) and DEFAULT_SUBJECT_GATE < gate else 0.0
    steer = config.steer
    if steer is None:
        steer = DEFAULT_STEER if row_gain else 0.0
    answer_gate = config.answer_gate
    if answer_gate is None:
        answer_gate = DEFAULT_ANSWER_GATE if gate and last_layer else 0.0
    refractory = config.refractory
    if refractory is None:
        refractory = DEFAULT_REFRACTORY if gate else 0
    return replace(config, gate=gate, row_gain=row_gain, subject_gate=subject_gate, steer=steer, answer_gate=answer_gate,
                   refractory=refractory)


def with_form_defaults(config: EditorConfig, form: str) -> EditorConfig:
    """``config`` for facts posed as ``form``: "chat" (a question in the chat template, as the agent learns
    every fact) keeps it; "plain" (a raw completion, CounterFact's "The mother tongue of X is") leaves the
    answer gate off unless one is given. Its reading, the base model's centered answer state, tells a chat
    question's rewordings from other questions about the subject (zsRE), but not a completion's
    (docs/RESULTS.md, "What CounterFact's generalization measures"): after 1,000 CounterFact edits it cost
    gate 0.95 / subject gate 0.1 16 points of generalization for 2 of subject leak, where after all 500
    zsRE edits it cut the first-token leak from 0.79 to 0.17."""
    if form not in ("chat", "plain"):
        raise ValueError(f"a fact is posed as a chat question or a plain completion, not {form!r}")
    return replace(config, answer_gate=0.0) if form == "plain" and config.answer_gate is None else config


# The QF paper's exact rule: minimum Frobenius norm, the instructed pass's change as it is, every row.
PAPER_RULE = {"preserve": 0.0, "gain": 1.0, "focus": 0, "auto_significance": False, "condition": 0.0, "phrasings": 0,
              "contexts": 0, "keys_data": None, "question_keys": 0.0, "anchors": 0, "near_questions": 0, "soft_anchors": 0.0,
              "spread": 1, "answer_forms": False, "gate": 0.0, "row_gain": 0.0, "steer": 0.0,
              "subject_gate": 0.0, "answer_gate": 0.0, "subject_prime": 0.0,
              "subject_centered": False, "subject_full": 0.0, "refractory": 0}


def with_qf2_settings(config: EditorConfig, lr: float | None = None, rule: str | None = None) -> EditorConfig:
    """``config`` with the QF2 learning rate and rule given on a command line (None keeps config's)."""
    given = {"lr": lr, "qf2_rule": rule}
    return replace(config, **{name: value for name, value in given.items() if value is not None})


def qf2_settings_of(config: EditorConfig) -> dict:
    """The QF2 settings of ``config`` that act on its update, as recorded and reported: the rule, and
    its lr unless the rule is the solve (which has none)."""
    return {"rule": config.qf2_rule} | ({} if config.qf2_rule == "solve" else {"lr": config.lr})


def solver_settings_of(config: EditorConfig) -> dict:
    """The QF solver settings of ``config`` (the fields PAPER_RULE names), as recorded and reported."""
    return {name: getattr(config, name) for name in PAPER_RULE}


@dataclass
class Consolidation:
    key: Hashable
    fact: Fact
    answer: str  # the answer that was written (given or the instructed model's own)
    rows: int
    verification: str  # greedy closed-book answer after the write
    seconds: float  # capture + solve + write (verification excluded)
    timings: dict[str, float] = field(default_factory=dict)


class Answering:
    """The loaded model and the editor settings, and the questions every editor asks."""

    def __init__(self, loaded: LoadedModel, config: EditorConfig):
        if config.qf2_rule not in QF2_RULES:
            raise ValueError(f"the QF2 rule is one of {', '.join(QF2_RULES)}, not {config.qf2_rule!r}")
        self.loaded, self.config = loaded, config
        # The tokens the instructed model emitted for each of its answers (stop token dropped). They
        # can differ from the answer text re-tokenized (the 0.5B emits "Q" + "i" where the tokenizer
        # writes "Qi"); greedy decoding after the edit follows the emitted path.
        self._emitted: dict[str, tuple[int, ...]] = {}

    @property
    def model(self):
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def ask(self, query: str, system: str | None = None, max_new_tokens: int | None = None) -> Answer:
        return greedy_answer(
            self.model, self.tokenizer, query, system if system is not None else self.config.system,
            max_new_tokens or self.config.verify_tokens,
        )

    def phrasings_for(self, query: str) -> tuple[str, ...]:
        """The model's own rephrasings of ``query`` (``config.phrasings`` of them at most)."""
        return generate_phrasings(self.model, self.tokenizer, query, self.config.phrasings, self.config.system)

    def instructed_answer(self, fact: Fact) -> str:
        answer = self.ask(fact.query, instructed_system(fact.instruction, self.config.system), self.config.max_answer_tokens)
        if not answer.text:
            raise ConsolidationError("the model gave an empty answer with the instruction in context; pass an answer")
        if not answer.finished:
            raise ConsolidationError(
                f"the model did not finish its answer within {self.config.max_answer_tokens} tokens with the "
                f"instruction in context (it began {answer.text[:60]!r}); pass a short answer"
            )
        stops = set(stop_ids(self.tokenizer))
        self._emitted[answer.text] = tuple(t for t in answer.token_ids if t not in stops)
        return answer.text

    def emitted_tokens(self, answer: str) -> tuple[int, ...] | None:
        """The tokens the instructed model emitted for ``answer`` (None: not its own answer)."""
        return self._emitted.get(answer)

    def _check_length(self, p: Pass) -> None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and p.input_ids.shape[1] > limit:
            raise ConsolidationError(f"prompt + answer is {p.input_ids.shape[1]} tokens, over the model's context of {limit}")

    def answer_for(self, fact: Fact) -> str:
        """The answer to write: the fact's own, else the instructed model's."""
        return (fact.answer or "").strip() or self.instructed_answer(fact)
