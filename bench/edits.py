"""The editing benchmark: N sequential edits, then every case evaluated, per method, side by side.

Protocol (docs/RESULTS.md): the pre-edit model is evaluated on every case; then, for each
method in turn, starting from the same base weights, the N cases are edited in order, ``batch``
facts per consolidation (each consolidation sees the weights the previous ones left), and after
all N edits every case is evaluated; the method's weights are then restored. With
``eval_every`` K, the cases edited so far are also scored (teacher forced only) after every K
edits, for a curve.

QF: in the chat template the fact goes through ``QFEditor.capture`` (the agent's own path: the
instruction in the system message, rows = answer tokens + end of turn). In the plain template
the two teacher-forced passes are raw text ("prompt target_new. prompt" + " target_new" against
"prompt" + " target_new"), rows = the positions predicting the target tokens. Either way the rows
join the editor's joint solve, re-solved from W0 once per consolidation.
"""

from __future__ import annotations

import hashlib
import resource
import statistics
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace

import torch

from bench import metrics as M
from bench.baselines import EditMethod, FineTune, InContext
from bench.datasets import EditCase, Poser, instruction_for, right_padded
from bench.last_layer import LastLayerScorer
from memory import architecture as arch
from memory.answering import PAPER_RULE, with_form_defaults
from memory.consolidate import QFEditor
from memory.delta import tensor_sha256
from memory.contexts import in_contexts
from memory.fact import Fact, FactRows
from memory.generate import greedy_batch
from memory.preserve import Progress
from memory.prompts import Pass

METHODS = ("qf", "qf-paper", "ft", "icl")
# QF solver variants (issue 7), side by side: "qf" is the editor's own configuration (the
# defaults, or the CLI's flags); "qf-paper" the paper's rule (identity norm, gain 1, every row);
# "qf/" followed by "/"-separated settings over the defaults: pP (preserve strength P), gG (gain
# G), fK (focus on the target's and top K tokens' logits), cK (condition cap K), qN (N rephrasings
# of each question by the model, chat template), aN (N anchors: the prompt asked of other subjects,
# held unchanged, memory.anchors), nN (N near questions held too, memory.near_questions), bB (those
# anchors soft, of weight B, memory.soft_anchors), sK (spread each fact over K layers up to the edited
# one, memory.spread), kW (weight W of the question keys in the preserving metric, memory.preserve), xN
# (the prompt also after N context prefixes, memory.contexts), tT (each row a neuron gated at cosine T,
# memory.gated), rG (row gains up to G), uT (subject gate T), mM (steer M), eT (answer gate T), hC
# (subject prime C, memory.gated.named_gate), wC (a named neuron's whole value from cosine C), yN (refractory
# span N, memory.refractory), centered (the subject-centered gate, memory.subject_center), forms (also the
# instructed model's own answer, chat template), auto (automatic significance), all (every row).
# E.g. "qf/p0", "qf/p30/g1.5/auto", "qf/f8", "qf/c1e3", "qf/a3", "qf/a3/b10", "qf/n4/b10", "qf/p0/g1/s3",
# "qf/k0", "qf/x4".


# --- QF --------------------------------------------------------------------------------
def _pass(poser: Poser, prompt: list[int], target: list[int]) -> Pass:
    """Prompt + target tokens; its rows predict ``target`` (the last target is never fed)."""
    return Pass(torch.tensor([prompt + target[:-1]]), len(prompt), tuple(target))


def plain_rows(editor: QFEditor, poser: Poser, case: EditCase) -> FactRows:
    """The plain-text two-pass capture: instruction as a preceding sentence vs the bare prompt (and
    the prompt after the editor's context prefixes, memory.contexts); with anchors, the bare prompt
    about other subjects too (memory.anchors)."""
    target = poser.answer_ids(case.target_new)
    weights = torch.ones(len(target), dtype=torch.float64)
    questions = [(_pass(poser, poser.prompt_ids(prompt, instruction_for(case, "plain")), target),
                  _pass(poser, poser.prompt_ids(prompt), target), weights)
                 for prompt in (case.prompt, *in_contexts(case.prompt, editor.config.contexts))]
    rows = editor.anchored(editor.capture_rows(questions, case.target_new), case.prompt, case.subject, poser.prompt_ids)
    return editor.with_subject_key(rows, case.prompt, case.subject, poser.prompt_ids, chat=False)


class QFMethod(EditMethod):
    """QF through the editor's joint solve. ``captured`` ((case index, phrasings, anchors) -> QFMethod.rows)
    may be shared by the variants of one run: a fact's rows are upstream of the edited matrix and do
    not depend on the solver's settings, except for focus and automatic significance (never shared)."""

    name = "qf"

    def __init__(self, editor: QFEditor, poser: Poser, captured: dict[tuple, tuple] | None = None):
        self.editor, self.poser = editor, poser
        self.keys: list[tuple[str, int]] = []
        shareable = not (editor.config.focus or editor.config.auto_significance)
        self.captured = captured if captured is not None and shareable else {}

    def rows(self, case: EditCase) -> tuple[FactRows, float, tuple[str, ...]]:
        """The case's rows, the seconds their capture passes (and phrasings) took when they ran, and
        the phrasings the model wrote for it."""
        key = self._key(case)
        if key not in self.captured:
            t0 = time.perf_counter()
            others: tuple[str, ...] = ()
            if self.poser.template == "chat":
                others = self.editor.phrasings_for(case.prompt) if self._phrasings else ()
                rows = self.editor.capture(Fact(instruction_for(case, "chat"), case.prompt, case.target_new, phrasings=others,
                                                subject=case.subject if case.subject in case.prompt else None))
            else:
                rows = plain_rows(self.editor, self.poser, case)
            self.captured[key] = rows, time.perf_counter() - t0, others
        return self.captured[key]

    def notes(self, case: EditCase) -> dict:
        """What the model wrote for the case: its rephrasings and other forms of the answer, if any."""
        rows, _, phrasings = self.captured.get(self._key(case), (None, 0, ()))
        forms = rows.forms if rows is not None else ()
        return ({"phrasings": list(phrasings)} if phrasings else {}) | ({"answer_forms": list(forms)} if forms else {})

    @property
    def _phrasings(self) -> int:
        """Rephrasings asked for per case: the chat template's questions only."""
        return self.editor.config.phrasings if self.poser.template == "chat" else 0

    def _key(self, case: EditCase) -> tuple:
        """What a case's captured rows depend on: the case and the settings that change the captures."""
        config = self.editor.config
        forms = config.answer_forms and self.poser.template == "chat"
        subject = bool(config.gate)  # gated neurons' rows carry the subject key (memory.subject_gate)
        return (case.index, self._phrasings, config.contexts, config.anchors, config.near_questions, config.spread, forms,
                subject, config.subject_centered)  # and, centered, the subject's mean (memory.subject_center)

    def edit(self, cases: list[EditCase]) -> dict:
        rows, capture_seconds = 0, 0.0
        for case in cases:
            fact_rows, seconds, _ = self.rows(case)
            t0 = time.perf_counter()
            self.editor.add_rows(("bench", case.index), fact_rows)  # deciding row gains and steering reads the head
            seconds += time.perf_counter() - t0
            self.keys.append(("bench", case.index))
            rows += fact_rows.num_rows
            capture_seconds += seconds
        solve_seconds = self.editor.rebuild()
        # A consolidation's cost: the capture as measured when it ran (once per run), adding the rows (each
        # method's own: its gains and steering), then the solve.
        return {"rows": rows, "seconds": capture_seconds + solve_seconds, "solve_seconds": solve_seconds}

    def restore(self) -> None:
        for key in self.keys:
            self.editor.drop(key)
        self.keys.clear()
        self.editor.rebuild()


def _setting(part: str) -> tuple[str, object]:
    """One "/"-separated part of a QF variant name -> (EditorConfig field, value)."""
    if part in ("auto", "all"):
        return "auto_significance", part == "auto"
    if part == "forms":
        return "answer_forms", True
    if part == "centered":
        return "subject_centered", True
    field_name = {"p": "preserve", "g": "gain", "f": "focus", "c": "condition", "q": "phrasings", "a": "anchors",
                  "s": "spread", "k": "question_keys", "b": "soft_anchors", "n": "near_questions",
                  "x": "contexts", "t": "gate", "r": "row_gain", "u": "subject_gate", "m": "steer",
                  "e": "answer_gate", "h": "subject_prime", "w": "subject_full", "y": "refractory"}.get(part[:1])
    if field_name is None or not part[1:]:
        raise ValueError(part)
    whole = ("focus", "phrasings", "anchors", "spread", "near_questions", "contexts", "refractory")
    return field_name, (int if field_name in whole else float)(part[1:])


def qf_settings(name: str) -> dict | None:
    """EditorConfig fields of a QF variant name (see METHODS); None for "qf" (the editor's own)."""
    if name == "qf":
        return None
    if name == "qf-paper":
        return dict(PAPER_RULE)
    base, *parts = name.split("/")
    try:
        settings = dict(_setting(part) for part in parts)
    except ValueError:
        settings = {}
    if base != "qf" or not parts or len(settings) != len(parts):
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}, or qf/ + settings such as "
                         "qf/p10/g1.5/auto")
    return settings


def qf_variant(name: str, editor: QFEditor, progress: Progress | None = None, form: str = "chat") -> QFEditor:
    """The editor for a QF variant name on facts posed as ``form`` (the template: memory.answering.with_form_defaults):
    ``editor`` itself for "qf" where the form changes nothing, else one configured as named."""
    settings = qf_settings(name)
    config = with_form_defaults(replace(editor.given, **(settings or {})), form)
    return editor if settings is None and config == editor.given else QFEditor(editor.loaded, config, progress=progress)


def make_method(name: str, editor: QFEditor, poser: Poser, ft_steps: int = 25, ft_lr: float = 5e-4,
                progress: Progress | None = None, captured: dict | None = None) -> EditMethod:
    if name.startswith("qf"):
        method = QFMethod(qf_variant(name, editor, progress, poser.template), poser, captured)
        method.name = name
        return method
    if name == "ft":
        return FineTune(editor.model, poser, editor.parameter, editor.joint.W0, steps=ft_steps, lr=ft_lr)
    if name == "icl":
        return InContext(poser)
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


def _weights_sha256(editor: QFEditor) -> str:
    """One hash of every matrix ``editor`` writes (the edited layer's, and the lower ones of a spread solve)."""
    hashes = [tensor_sha256(editor.model.get_parameter(name).detach().float()) for name, _ in editor.base_matrices()]
    return hashes[0] if len(hashes) == 1 else hashlib.sha256("".join(hashes).encode()).hexdigest()


# --- evaluation ------------------------------------------------------------------------
@dataclass
class CaseEval:
    scores: dict[str, M.TokenScores]
    answers: dict[str, tuple[int, ...]] = field(default_factory=dict)  # greedy token ids
    texts: dict[str, str] = field(default_factory=dict)


def scored_pairs(case: EditCase) -> dict[str, tuple[str, str]]:
    """name -> (prompt, continuation) scored teacher-forced for this case's family (and the new
    target after another question about the subject, where the case has one)."""
    other = {"other_relation_new": (case.other_relation, case.target_new)} if case.other_relation else {}
    return _family_pairs(case) | other


def _family_pairs(case: EditCase) -> dict[str, tuple[str, str]]:
    if case.family == "counterfact":
        return {
            "prompt_new": (case.prompt, case.target_new), "prompt_true": (case.prompt, case.ground_truth),
            "paraphrase_new": (case.paraphrase, case.target_new), "paraphrase_true": (case.paraphrase, case.ground_truth),
            "neighborhood_new": (case.neighborhood, case.target_new),
            "neighborhood_true": (case.neighborhood, case.neighborhood_answer),
        }
    return {
        "prompt_new": (case.prompt, case.target_new), "paraphrase_new": (case.paraphrase, case.target_new),
        "neighborhood_answer": (case.neighborhood, case.neighborhood_answer),
    }


def teacher_forced(model, poser: Poser, pairs: dict[str, tuple[str, str]], context: str | None) -> dict[str, M.TokenScores]:
    """One right-padded forward pass over all pairs; scores at the continuation positions."""
    return scored_tokens(model, {k: (poser.prompt_ids(p, context), poser.answer_ids(c)) for k, (p, c) in pairs.items()},
                         poser.pad_id)


@torch.no_grad()
def scored_tokens(model, tokens: dict[Hashable, tuple[list[int], list[int]]], pad_id: int
                  ) -> dict[Hashable, M.TokenScores]:
    """One right-padded forward pass over name -> (prompt ids, continuation ids); the scores of
    each continuation's tokens."""
    ids, mask, rows = right_padded(list(tokens.values()), pad_id)
    device = next(model.parameters()).device
    keep = sorted({r for rs in rows for r in rs})  # the LM head runs on these positions only
    where = {r: j for j, r in enumerate(keep)}
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False,
                   logits_to_keep=torch.tensor(keep, device=device)).logits
    return {k: M.token_scores(logits[i, [where[r] for r in rows[i]]].cpu(), cont)
            for i, (k, (_, cont)) in enumerate(tokens.items())}


FLUENCY_BATCH = 64  # neighbour answers scored in one forward pass


def base_fluency(model, poser: Poser, cases: list[EditCase], evals: list[CaseEval]) -> list[float | None]:
    """Per case, how plausible the model (call it at the base weights) finds the greedy answer given
    to its neighbourhood prompt: the mean per-token log-probability of that answer after the prompt
    (posed without context); None for a case without one. The neighbour's answer should not have
    changed, so this reads fluency without the new target's own implausibility (the prompt's and
    paraphrase's answers name a counterfactual the base model doubts by design). Word salad scores
    far below the base model's own answers (docs/RESULTS.md)."""
    answered = {i: (poser.prompt_ids(case.neighborhood), list(ev.answers["neighborhood"]))
                for i, (case, ev) in enumerate(zip(cases, evals)) if ev.answers.get("neighborhood")}
    fluency: dict[int, float] = {}
    order = list(answered)
    for start in range(0, len(order), FLUENCY_BATCH):  # right-padded batches of answers
        scores = scored_tokens(model, {i: answered[i] for i in order[start:start + FLUENCY_BATCH]}, poser.pad_id)
        fluency.update({i: M.mean_logprob(s) for i, s in scores.items()})
    return [fluency.get(i) for i in range(len(cases))]


def with_fluency(per_case: list[dict], fluency: list[float | None]) -> list[dict]:
    return [m | ({"neighborhood_fluency": f} if f is not None else {}) for m, f in zip(per_case, fluency)]


def prepare_scorer(scorer: LastLayerScorer, poser: Poser, case: EditCase) -> None:
    """Cache the case's activations for the last-layer scorer (once per run)."""
    if case.index not in scorer:
        tokens = {k: (poser.prompt_ids(p), poser.answer_ids(c)) for k, (p, c) in scored_pairs(case).items()}
        scorer.prepare(case.index, tokens)


# Cases answered greedily in one batch (3 prompts each): every decoding step reads all the weights,
# so a batch shares that cost: the 1.5B answered 30 zsRE cases (up to 16 tokens) in 20 s this way,
# where one case at a time took about 2.9 s a case for 8 tokens of CounterFact (2026-12-03 runs).
GEN_BATCH = 16


def evaluate_case(model, poser: Poser, case: EditCase, context: str | None,
                  scores: dict[str, M.TokenScores] | None = None) -> CaseEval:
    """Teacher-forced scores (unless given, e.g. by the cached last-layer scorer, bench.last_layer);
    greedy answers are added by answer_cases."""
    return CaseEval(scores if scores is not None else teacher_forced(model, poser, scored_pairs(case), context))


def answer_cases(model, poser: Poser, cases: list[EditCase], evals: list[CaseEval], contexts: list[str | None],
                 gen_tokens: int) -> None:
    """Greedy answers (up to ``gen_tokens``) to each case's prompt, paraphrase and neighbour, into its
    CaseEval: all the cases' prompts left-padded in one batch (call it with up to GEN_BATCH cases)."""
    names = ("prompt", "paraphrase", "neighborhood")
    prompts = [poser.prompt_ids(getattr(case, name), context) for case, context in zip(cases, contexts) for name in names]
    answers = greedy_batch(model, prompts, poser.stop_ids(), gen_tokens, poser.pad_id)
    for i, ev in enumerate(evals):
        ev.answers = dict(zip(names, answers[i * len(names):(i + 1) * len(names)]))
        ev.texts = {k: poser.tokenizer.decode(a, skip_special_tokens=True).strip() for k, a in ev.answers.items()}


def case_metrics(case: EditCase, ev: CaseEval, pre: CaseEval) -> dict[str, float]:
    """Per-case metrics of the case's family (+ generation metrics when answers were generated)."""
    if case.family == "counterfact":
        out = M.counterfact_case(ev.scores)
    else:
        out = M.zsre_case(ev.scores, pre.scores)
    if "other_relation_new" in ev.scores:
        out["subject_leak"] = M.top1_accuracy(ev.scores["other_relation_new"])
        out["subject_leak_first"] = M.first_token_top1(ev.scores["other_relation_new"])
    if ev.answers and pre.answers:
        out.update(M.generation_case(ev.answers, ev.texts, pre.answers, case.target_new))
    return out


def case_record(ev: CaseEval, metrics: dict[str, float]) -> dict:
    return {**metrics, "mean_logprob": {k: round(M.mean_logprob(s), 4) for k, s in ev.scores.items()}, "answers": ev.texts}


# --- protocol ---------------------------------------------------------------------------
def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _no_progress(description: str, total: int) -> Callable[[int], None]:
    return lambda n=1: None


def answered_count(cases: int, gen_tokens: int, gen_cases: int | None) -> int:
    """How many of ``cases`` get greedy answers: the first ``gen_cases`` (None: all), none without gen_tokens."""
    return 0 if gen_tokens <= 0 else cases if gen_cases is None else min(gen_cases, cases)


def _evaluate_all(model, poser, cases, pre, context_of, gen_tokens, update, scorer=None, gen_cases=None
                  ) -> tuple[list[CaseEval], list[dict]]:
    """Evaluate every case; greedy answers (gen_tokens > 0) for the first ``gen_cases`` only (None: all).

    With a ``scorer``, cases evaluated without context are scored from its cache, all at once.
    ``update`` advances once per case scored and once per case answered (Evaluation.steps)."""
    cached, counted = {}, set()
    if scorer is not None:
        plain = [case for case in cases if context_of(case) is None]
        for case in plain:
            if case.index not in scorer:  # a forward pass: this is the slow part, shown as progress
                prepare_scorer(scorer, poser, case)
                counted.add(case.index)
                update(1)
        cached = scorer.scores_many([case.index for case in plain])
    evals = []
    for case in cases:
        evals.append(evaluate_case(model, poser, case, context_of(case), cached.get(case.index)))
        update(case.index not in counted)
    answered = answered_count(len(cases), gen_tokens, gen_cases)
    for start in range(0, answered, GEN_BATCH):
        group = cases[start:min(start + GEN_BATCH, answered)]
        answer_cases(model, poser, group, evals[start:start + len(group)], [context_of(c) for c in group], gen_tokens)
        update(len(group))
    per_case = [case_metrics(case, ev, pre[i] if pre is not None else ev) for i, (case, ev) in enumerate(zip(cases, evals))]
    return evals, per_case


@dataclass
class Evaluation:
    """How a run evaluates: the posed template, the pre-edit reference, greedy answers (up to
    ``gen_tokens`` tokens, for the first ``gen_cases`` cases; None: all) and the cached scorer."""

    poser: Poser
    gen_tokens: int = 16
    gen_cases: int | None = None
    scorer: LastLayerScorer | None = None
    pre: list[CaseEval] | None = None

    def steps(self, cases: list[EditCase]) -> int:
        """run()'s progress steps: one per case scored, one per case answered greedily."""
        return len(cases) + answered_count(len(cases), self.gen_tokens, self.gen_cases)

    def run(self, model, cases: list[EditCase], context_of, update, generate: bool = True
            ) -> tuple[list[CaseEval], list[dict]]:
        return _evaluate_all(model, self.poser, cases, self.pre, context_of, self.gen_tokens if generate else 0,
                             update, self.scorer, self.gen_cases)


def run_method(editor: QFEditor, method: EditMethod, cases: list[EditCase], evaluation: Evaluation, batch: int,
               eval_every: int | None, progress: Progress) -> tuple[dict, list[dict]]:
    """Edit all cases sequentially with ``method``, evaluate, restore. Returns (summary, per-case records)."""
    weight = editor.model.get_parameter(editor.parameter)
    written = method.editor if isinstance(method, QFMethod) else editor  # the matrices the method writes
    base_sha = _weights_sha256(written)
    per_edit, details, curve, total = [], [], [], 0.0
    update = progress(f"{method.name}: editing", len(cases))
    try:
        for start in range(0, len(cases), batch):
            chunk = cases[start:start + batch]
            t0 = time.perf_counter()
            details.append(method.edit(chunk))
            seconds = details[-1].get("seconds", time.perf_counter() - t0)
            per_edit.append(seconds / len(chunk))
            total += seconds
            update(len(chunk))
            done = start + len(chunk)
            if eval_every and done < len(cases) and done // eval_every > start // eval_every:
                so_far = cases[:done]  # with greedy answers for the --gen-cases among them, and their fluency
                evals, per_case = evaluation.run(editor.model, so_far, method.context, _no_progress("", 0))
                with written.base_weights():
                    per_case = with_fluency(per_case, base_fluency(editor.model, evaluation.poser, so_far, evals))
                curve.append({"edits": done, **M.aggregate(per_case)})
        relative = written.relative_change() if isinstance(method, QFMethod) else M.relative_norm(weight, editor.joint.W0)
        neurons = written.neuron_stats() if isinstance(method, QFMethod) else {}  # gated neurons (memory.gated)
        t0 = time.perf_counter()
        evals, per_case = evaluation.run(editor.model, cases, method.context,
                                         progress(f"{method.name}: evaluating", evaluation.steps(cases)))
        eval_seconds = time.perf_counter() - t0
    finally:  # the next method starts from the base weights, also after an error
        method.restore()
    per_case = with_fluency(per_case, base_fluency(editor.model, evaluation.poser, cases, evals))
    summary = {
        "metrics": {**M.aggregate(per_case), "relative_weight_change": relative, **neurons},
        "seconds_per_edit": statistics.median(per_edit) if per_edit else 0.0,
        "edit_seconds_total": total,
        "eval_seconds": eval_seconds,
        "peak_rss_mib": _peak_rss_mib(),
        "base_sha256": base_sha,
        "restored": _weights_sha256(written) == base_sha,
        "curve": curve + [{"edits": len(cases), **M.aggregate(per_case)}],
    }
    summary["capacity"] = M.capacity(summary["curve"])
    if details and "steps" in details[0]:
        summary["ft_steps_median"] = statistics.median(d["steps"] for d in details)
    if details and "solve_seconds" in details[0]:
        summary["solve_seconds_last"] = details[-1]["solve_seconds"]  # the re-solve over all rows, at the end
    return summary, [{**case_record(ev, m), **method.notes(case)} for case, ev, m in zip(cases, evals, per_case)]


def run_benchmark(editor: QFEditor, cases: list[EditCase], template: str = "chat", methods: tuple[str, ...] = ("qf",),
                  batch: int = 1, eval_every: int | None = None, gen_tokens: int = 16, ft_steps: int = 25,
                  ft_lr: float = 5e-4, progress: Progress | None = None, gen_cases: int | None = None,
                  cached_eval: bool = True) -> dict:
    """The whole benchmark; returns {"pre", "methods", "cases"} (see docs/RESULTS.md).

    ``cached_eval``: when the editor edits the last layer, teacher-forced scores come from cached
    activations (bench.last_layer; in-context scores still run the model)."""
    if not cases:
        raise ValueError("no cases to edit: check --data, --offset and --limit")
    if batch < 1:
        raise ValueError("--batch must be at least 1")
    progress = progress or _no_progress
    last = arch.num_layers(editor.model) - 1
    poser = Poser(editor.tokenizer, template, editor.config.system)
    scorer = LastLayerScorer(editor.model, editor.parameter, poser.shared_prefix) if cached_eval and editor.layer == last else None
    evaluation = Evaluation(poser, gen_tokens, gen_cases, scorer)
    pre, pre_metrics = evaluation.run(editor.model, cases, lambda c: None, progress("pre-edit: evaluating", evaluation.steps(cases)))
    pre_metrics = with_fluency(pre_metrics, base_fluency(editor.model, evaluation.poser, cases, pre))
    # The base model is its own reference: its zsRE specificity (agreement) and its
    # neighborhood_unchanged are 1 by definition.
    evaluation.pre = pre
    results, records, captured = {}, {}, {}
    for name in methods:
        method = make_method(name, editor, evaluation.poser, ft_steps, ft_lr, progress, captured)
        # The cached scorer holds for edits of the last layer alone; a spread solve writes lower ones too.
        spread = isinstance(method, QFMethod) and method.editor.config.spread > 1
        scored = replace(evaluation, scorer=None) if spread else evaluation
        results[name], records[name] = run_method(editor, method, cases, scored, batch, eval_every, progress)
    out_cases = []
    for i, case in enumerate(cases):
        row = {"index": case.index, "subject": case.subject, "prompt": case.prompt, "target_new": case.target_new,
               "ground_truth": case.ground_truth, "pre": case_record(pre[i], pre_metrics[i])}
        if case.other_relation:  # the question subject_leak is scored on
            row["other_relation"] = case.other_relation
        row.update({name: records[name][i] for name in methods})
        out_cases.append(row)
    return {"pre": {**M.aggregate(pre_metrics), "relative_weight_change": 0.0}, "methods": results, "cases": out_cases}


# --- report -----------------------------------------------------------------------------
COLUMNS = [("efficacy", "efficacy"), ("generalization", "generalization"), ("specificity", "specificity"),
           ("harmonic_mean", "hmean"), ("edit_success", "gen edit"), ("edit_repeats", "gen edit repeats"),
           ("paraphrase_success", "gen para"),
           ("neighborhood_unchanged", "gen nbhd same"), ("neighborhood_fluency", "nbhd fluency"),
           ("subject_leak", "subject leak"), ("subject_leak_first", "leak 1st token"),
           ("relative_weight_change", "||dW||/||W0||")]


def format_table(result: dict) -> str:
    """Markdown: one row for the pre-edit model and one per method."""
    head = "| method | " + " | ".join(label for _, label in COLUMNS) + " | s/edit | peak RSS MiB |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]

    def cells(m: dict) -> str:
        return " | ".join(f"{m[k]:.3f}" if k in m else "-" for k, _ in COLUMNS)

    lines.append(f"| pre-edit | {cells(result['pre'])} | - | - |")
    for name, r in result["methods"].items():
        lines.append(f"| {name} | {cells(r['metrics'])} | {r['seconds_per_edit']:.2f} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def format_capacity(result: dict) -> str:
    """One line per method: how many edits it held at or above the capacity efficacy (bench.metrics.capacity)."""
    lines = []
    for name, method in result["methods"].items():
        cap = method["capacity"]
        if cap["broke"] is None:
            held = f"held all {cap['held']} edits"
        elif cap["held"]:
            held = f"held through {cap['held']} edits, below at {cap['broke']}"
        else:
            held = f"below from the first point ({cap['broke']} edits)"
        lines.append(f"capacity of {name} (efficacy >= {cap['threshold']:g}): {held}")
    return "\n".join(lines)


def format_curve(result: dict) -> str:
    """Markdown: efficacy / generalization / specificity of the cases edited so far, per method
    and number of edits (the --eval-every curve; the last point is the final evaluation)."""
    keys = ["efficacy", "generalization", "specificity"]
    points = [p for m in result["methods"].values() for p in m["curve"]]
    keys += [k for k in ("edit_success", "neighborhood_fluency") if any(k in p for p in points)]  # with --gen-tokens
    lines = ["| method | edits | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, method in result["methods"].items():
        for point in method["curve"]:
            cells = " | ".join(f"{point[k]:.3f}" if k in point else "-" for k in keys)
            lines.append(f"| {name} | {point['edits']} | {cells} |")
    return "\n".join(lines)
