"""Options and error handling shared by every qf command (cli.py and bench/commands.py)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from memory.contexts import CONTEXT_PREFIXES
from memory.refractory import RECENT_TOKENS

# The library's documented user errors (bad input, unknown ids, refused operations): a clean
# message, no traceback. LookupError covers the ledger's not-found errors.
USER_ERRORS = (ValueError, LookupError, RuntimeError)


# The solver options model_options adds (EditorConfig fields), and those only QF's solve reads: QF2
# (memory.qf2_editor) writes up_proj by its own rule and takes phrasings alone.
SOLVER_SETTINGS = ("preserve", "gain", "focus", "auto_significance", "condition", "phrasings", "contexts", "anchors",
                   "near_questions", "soft_anchors", "spread", "answer_forms", "keys_data", "question_keys", "gate", "row_gain",
                   "subject_gate", "steer", "answer_gate", "subject_prime", "subject_centered",
                   "subject_full", "refractory")
QF_ONLY_SETTINGS = tuple(name for name in SOLVER_SETTINGS if name != "phrasings")


def model_options(fn):
    """--model/--device/--dtype/--layer/--system, shared by every command that loads a model."""

    @click.option("--model", "model_name", envvar="QF_MODEL", default=None,
                  help="Registry name (qwen2.5-coder-1.5b, qwen2.5-coder-0.5b), local HF directory or hub id. [env QF_MODEL]")
    @click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="Where to run.")
    @click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float32"]), default="auto", show_default=True,
                  help="Model dtype (the edited matrix is always float32).")
    @click.option("--layer", type=int, default=None, help="Decoder layer to edit (default: the last; the paper used 23 of 28).")
    @click.option("--system", default=None, help="System prompt of the chat (default: the chat template's own).")
    # The defaults named in these helps are EditorConfig's (tests/test_solver_options.py checks them).
    @click.option("--preserve", type=click.FloatRange(min=0), envvar="QF_PRESERVE", default=None,
                  help="QF: strength of the K0-preserving solve (default 10; 0 = the paper's minimum-norm "
                       "rule). [env QF_PRESERVE]")
    @click.option("--gain", type=click.FloatRange(min=0, min_open=True), envvar="QF_GAIN", default=None,
                  help="QF: write gain x the instructed pass's change (default 1.5; 1 = the paper's rule), where "
                       "rows do not get their own (--row-gain). [env QF_GAIN]")
    @click.option("--row-gain", "row_gain", type=click.FloatRange(min=0), envvar="QF_ROW_GAIN", default=None,
                  help="QF at the last layer: instead of one --gain, give each answer row the smallest gain up to G "
                       "at which the plain pass's next token is the answer's, written whole and at half strength, "
                       "read off the LM head (memory.row_gain; default 4 with --gate at the last layer, else 0 = "
                       "--gain for every row). [env QF_ROW_GAIN]")
    @click.option("--steer", type=click.FloatRange(min=0), envvar="QF_STEER", default=None,
                  help="QF with row gains: where a row's gained change leaves its answer less than M nats ahead "
                       "of every other token (e.g. the instruction in context did not make the model say it), also "
                       "write the least change that puts it M ahead, read off the LM head (memory.steer; default "
                       "1 with row gains, else 0 = off). [env QF_STEER]")
    @click.option("--focus", type=click.IntRange(min=0), envvar="QF_FOCUS", default=None,
                  help="QF at the last layer: write only the change of the answer token's and the plain pass's "
                       "top K tokens' logits (default 0 = all of it, the paper's rule). [env QF_FOCUS]")
    @click.option("--auto-significance/--all-rows", "auto_significance", envvar="QF_AUTO_SIGNIFICANCE", default=None,
                  help="QF: drop the rows the model already predicts without the fact / constrain every row "
                       "(default: every row). [env QF_AUTO_SIGNIFICANCE]")
    @click.option("--condition", type=click.FloatRange(min=0), envvar="QF_CONDITION", default=None,
                  help="QF: cap the condition number of the facts' row system at K by raising the ridge "
                       "(default 0 = no cap, the paper's rule). [env QF_CONDITION]")
    @click.option("--phrasings", type=click.IntRange(min=0), envvar="QF_PHRASINGS", default=None,
                  help="QF: ask the model for N other ways to ask each new fact's query and learn them together "
                       "(default 0 = the query alone, the paper's rule). [env QF_PHRASINGS]")
    @click.option("--contexts", type=click.IntRange(0, len(CONTEXT_PREFIXES)), envvar="QF_CONTEXTS", default=None,
                  help="QF: also learn each fact's query asked after N short unrelated sentences (memory.contexts), "
                       "so it is found after other text too (default 0 = the query alone, the paper's rule). "
                       "[env QF_CONTEXTS]")
    @click.option("--anchors", type=click.IntRange(min=0), envvar="QF_ANCHORS", default=None,
                  help="QF: hold the fact's query asked of N other subjects unchanged, for facts with a subject "
                       "(default 0 = none, the paper's rule). [env QF_ANCHORS]")
    @click.option("--near-questions", "near_questions", type=click.IntRange(min=0), envvar="QF_NEAR_QUESTIONS",
                  default=None,
                  help="QF: also hold unchanged the N shipped questions of fact the model answers most like the "
                       "fact's query (nearest answering key), e.g. other subjects with the old answer (default 0 "
                       "= none, the paper's rule). [env QF_NEAR_QUESTIONS]")
    @click.option("--soft-anchors", "soft_anchors", type=click.FloatRange(min=0), envvar="QF_SOFT_ANCHORS",
                  default=None,
                  help="QF with --anchors or --near-questions: instead of holding the anchors exactly (one row each), penalize the "
                       "change there with weight B, in units of what the metric already charges (default 0 = "
                       "held exactly). [env QF_SOFT_ANCHORS]")
    @click.option("--answer-forms/--given-answer-only", "answer_forms", envvar="QF_ANSWER_FORMS", default=None,
                  help="QF: with a given --answer, also write the model's own answer with the fact in context "
                       "when it names the given one, e.g. a sentence for a bare name (default: the given answer "
                       "only, the paper's rule). [env QF_ANSWER_FORMS]")
    @click.option("--spread", type=click.IntRange(min=1), envvar="QF_SPREAD", default=None,
                  help="QF: write each fact with the down_proj of K consecutive layers up to the edited one, "
                       "solved together (MEMIT's residual split; default 1 = that layer alone, the paper's rule). "
                       "[env QF_SPREAD]")
    @click.option("--keys-data", type=click.Path(exists=True, dir_okay=False), envvar="QF_KEYS_DATA", default=None,
                  help="QF with --preserve: also collect the keys to preserve from these chat rows (JSON lines of "
                       '{"messages": [...]}, e.g. company_iqa/train.jsonl); default: the 110 shipped chats '
                       "alone. [env QF_KEYS_DATA]")
    @click.option("--question-keys", "question_keys", type=click.FloatRange(min=0), envvar="QF_QUESTION_KEYS",
                  default=None,
                  help="QF with --preserve: weight W of the keys of questions of fact (shipped prompts about many "
                       "subjects) in the preserving metric, against the generic chats' 1 (default 1; 0 = the "
                       "chats alone). [env QF_QUESTION_KEYS]")
    @click.option("--gate", type=click.FloatRange(0, 1), envvar="QF_GATE", default=None,
                  help="QF: write each fact with new neurons of the edited layer's MLP that fire only where its "
                       "input's cosine with the fact's keys exceeds T, leaving down_proj and other questions "
                       "alone; cannot be exported as a plain checkpoint (default 1 = nowhere but where the fact's "
                       "subject has been named, above --subject-gate; 0 = the linear update of down_proj, the "
                       "default with --spread, --soft-anchors or --near-questions). [env QF_GATE]")
    @click.option("--subject-gate", "subject_gate", type=click.FloatRange(0, 1, max_open=True), envvar="QF_SUBJECT_GATE",
                  default=None,
                  help="QF with --gate: a fact's neurons fire above this lower cosine T once its subject (given, or "
                       "guessed from the query's names) has been named earlier in the context, so rewordings of the "
                       "question reach the fact and questions about other subjects do not; other questions about "
                       "the same subject are reached more too (memory.subject_gate; default 0.1 with the default "
                       "--gate or --gate 1, 0.85 before 2026-12-07; 0 = off with another --gate given; a fact with no "
                       "subject fires above 0.85 everywhere then). [env QF_SUBJECT_GATE]")
    @click.option("--answer-gate", "answer_gate", type=click.FloatRange(0, 1, max_open=True), envvar="QF_ANSWER_GATE",
                  default=None,
                  help="QF with --gate at the last layer: a fact's neurons fire only where the model, before "
                       "anything was learned, was about to give the same kind of answer as to the fact's question "
                       "(the LM head's input, centered on shipped questions', within cosine T of the fact's), so "
                       "other questions about the same subject keep their own answers; the mean of those questions "
                       "is collected once per checkpoint (memory.answer_gate; default 0.8 with --gate at the last "
                       "layer, else 0 = off; `qf bench edits` leaves it off on plain completions unless given). "
                       "[env QF_ANSWER_GATE]")
    @click.option("--subject-prime", "subject_prime", type=click.FloatRange(0, 1), envvar="QF_SUBJECT_PRIME",
                  default=0.0, show_default=True,
                  help="QF with --subject-gate: once its subject has been named, a fact's neurons also fire weakly "
                       "below the subject gate, at most C of their strength, more the closer the question is to the "
                       "fact's, so a reworded question leans to the learned answer without other questions about "
                       "the subject taking it (memory.gated.named_gate; 0 = off). [env QF_SUBJECT_PRIME]")
    @click.option("--subject-centered/--no-subject-centered", "subject_centered", envvar="QF_SUBJECT_CENTERED",
                  default=False, show_default=True,
                  help="QF with --subject-gate: where its subject has been named, a fact's neurons compare the "
                       "question with the fact's after removing what every question about the subject shares (both "
                       "centered on the subject's mean input, from shipped questions about it), so --subject-gate is a "
                       "threshold on that cosine; costs one more forward pass per subject "
                       "(memory.subject_center). [env QF_SUBJECT_CENTERED]")
    @click.option("--subject-full", "subject_full", type=click.FloatRange(0, 1), envvar="QF_SUBJECT_FULL",
                  default=0.0, show_default=True,
                  help="QF with --subject-gate: once its subject has been named, the neuron of the row where a fact's "
                       "answer opens fires at its whole value from cosine C up, its strength rising from 0 at the "
                       "subject gate to all of it at C instead of at cosine 1 (the rows within the answer keep that "
                       "ramp): with --subject-centered, whose reworded questions sit at low cosines, more of them get "
                       "the learned answer, and more other questions about the subject too "
                       "(memory.gated.named_gate; 0 = off). [env QF_SUBJECT_FULL]")
    @click.option("--refractory", type=click.IntRange(0, RECENT_TOKENS), envvar="QF_REFRACTORY", default=None,
                  help="QF with --gate: a fact's neuron does not fire where the token it writes is among the last N "
                       "input tokens, so a learned answer is not repeated straight after it (\"football football\"), "
                       "nor in a short loop; a neuron whose own answer repeats its token there is exempt "
                       "(memory.refractory; default 8 with --gate, else 0 = off). [env QF_REFRACTORY]")
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        solver = {name: kwargs.pop(name) for name in SOLVER_SETTINGS}
        if solver["keys_data"] is not None:
            solver["keys_data"] = str(Path(solver["keys_data"]).resolve())
        click.get_current_context().meta["qf.solver"] = {k: v for k, v in solver.items() if v is not None}
        return fn(*args, **kwargs)

    return wrapper


def qf_only_options_given() -> list[str]:
    """The QF-only solver options (as their flags) given on this command line; QF2 would ignore them."""
    ctx = click.get_current_context()
    return [p.opts[0] for p in ctx.command.params
            if p.name in QF_ONLY_SETTINGS and ctx.get_parameter_source(p.name) is click.core.ParameterSource.COMMANDLINE]


def refuse_qf_only_options(method: str) -> None:
    """A usage error when QF-only solver options are given on the command line with --method qf2, which
    would ignore them (set in the environment they stay QF's defaults and are not refused)."""
    if method != "qf2":
        return
    given = qf_only_options_given()
    if given:
        raise click.UsageError(f"{', '.join(given)} only apply to --method qf; QF2 updates up_proj by --qf2-rule "
                               "(and takes --phrasing/--phrasings).")


def qf2_options(fn):
    """--lr/--qf2-rule: QF2's learning rate and update rule (memory.qf2; None keeps EditorConfig's)."""
    # The default named here is EditorConfig's (tests/test_qf2_ledger.py checks it).
    fn = click.option("--qf2-rule", type=click.Choice(["paper", "delta", "solve"]), default=None,
                      help="QF2: solve = the minimum-norm change of up_proj that makes the plain pass fire as the "
                           "instructed one at every answer row, solved jointly over all facts (no lr; the default, "
                           "except in `qf bench paper`); paper = lr s (y* - 0.5) x^T, the paper's Hebbian rule; "
                           "delta = lr s (y* - y) x^T, moving only the units whose plain firing y differs from y*."
                      )(fn)
    return click.option("--lr", type=float, default=None,
                        help="QF2 learning rate of the paper and delta rules (default 4e-4).")(fn)


def solver_settings() -> dict:
    """The QF solver settings given on this command line (--preserve, --gain, --focus, --auto-significance,
    --condition, --phrasings, --contexts, --anchors, --near-questions, --soft-anchors, --spread,
    --answer-forms, --keys-data, --question-keys, --gate, --row-gain, --subject-gate, --steer), as EditorConfig
    fields; the library's defaults for those not given."""
    return dict(click.get_current_context().meta.get("qf.solver", {}))


def db_option(fn):
    return click.option("--db", envvar="QF_DB_URL", default=None,
                        help="Ledger URL (default sqlite:///$QF_HOME/qf.db; postgresql+psycopg://... works). [env QF_DB_URL]")(fn)


def json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")(fn)


def emit(data: dict, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False) if as_json else text)


def user_errors(fn):
    """Turn the library's documented user errors into clean CLI errors (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except USER_ERRORS as exc:
            raise click.ClickException(str(exc).strip("'\"")) from exc

    return wrapper


def make_editor(model_name, device, dtype, layer, system):
    """A QFEditor on a freshly loaded model (no ledger): the benchmarks' entry point."""
    from memory.consolidate import EditorConfig, QFEditor
    from memory.loading import load_model

    loaded = load_model(model_name, device=device, dtype=dtype)
    return QFEditor(loaded, EditorConfig(layer=layer, system=system, **solver_settings()), progress=tqdm_progress())


def tqdm_progress(enabled: bool = True):
    """A progress factory for the library, (description, total) -> update(n), drawing tqdm bars on stderr."""
    import sys

    from tqdm.auto import tqdm

    def progress(description: str, total: int):
        bar = tqdm(total=total, desc=description, disable=not enabled, file=sys.stderr, leave=True)

        def update(n: int = 1) -> None:
            bar.update(n)
            if bar.n >= bar.total:
                bar.close()

        return update

    return progress
