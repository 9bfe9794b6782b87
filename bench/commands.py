"""`qf bench ...`: the benchmark commands (registered on the main group by cli.py).

bench/ must not import cli (cli imports bench); shared options live in cli_options.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cli_options import (emit, json_option, make_editor, model_options, qf2_options, solver_settings, tqdm_progress,
                         user_errors)


@click.group()
def bench() -> None:
    """Benchmarks: the QF paper protocol, speed, and sequential edits on CounterFact / zsRE."""


@bench.command("paper")
@click.option("--method", type=click.Choice(["qf", "qf2"]), default="qf", show_default=True,
              help="qf: the QF paper's protocol; qf2: the QF2 paper's, on a converted model (qf convert).")
@click.option("--paper-layer", is_flag=True, help="QF: edit the paper's layer (23 of 28, proportional) instead of the default.")
@qf2_options
@model_options
@json_option
@user_errors
def bench_paper(method, paper_layer, lr, qf2_rule, model_name, device, dtype, layer, system, as_json):
    """Run the 8 steps of the QF (or QF2) paper's Table 1 and print pass/fail per step."""
    from bench.paper import PROTOCOLS, format_table, run_paper_protocol, steps_as_dicts
    from memory.architecture import paper_layer as layer_of_paper
    from memory.answering import PAPER_RULE, qf2_settings_of, with_qf2_settings
    from memory.consolidate import EditorConfig, QFEditor
    from memory.loading import load_model
    from memory.qf2_editor import QF2Editor

    loaded = load_model(model_name, device=device, dtype=dtype)
    # The protocol reproduces the paper: its exact rule (QF's, or QF2's Hebbian one) unless the
    # command line says otherwise.
    solver = {**PAPER_RULE, **solver_settings()}
    config = EditorConfig(layer=layer_of_paper(loaded.model) if paper_layer else layer, system=system, **solver)
    config = with_qf2_settings(config, lr, qf2_rule or "paper")
    editor = QF2Editor(loaded, config) if method == "qf2" else QFEditor(loaded, config)
    steps = run_paper_protocol(editor, PROTOCOLS[method])
    passed = sum(s.passed for s in steps)
    data = {"method": method, "model": loaded.name, "layer": editor.layer, "passed": passed, "steps": steps_as_dicts(steps)}
    if method == "qf2":
        data.update(qf2_settings_of(config))
    where = f"QF2 at layer {editor.layer}" if method == "qf2" else f"layer {editor.layer}"
    emit(data, as_json, f"{format_table(steps)}\n\n{passed}/8 steps passed ({loaded.name}, {where})")


@bench.command("speed")
@click.option("-n", "--facts", default=8, show_default=True, help="Facts to consolidate (medians over them).")
@click.option("--resolve-facts", default=100, show_default=True, help="Facts in the joint re-solve timing.")
@model_options
@json_option
@user_errors
def bench_speed(facts, resolve_facts, model_name, device, dtype, layer, system, as_json):
    """Time capture, solve and write against one forward pass, and the joint re-solve."""
    from tqdm.auto import tqdm

    from bench.speed import run_speed

    editor = make_editor(model_name, device, dtype, layer, system)
    with tqdm(total=facts, desc="consolidating", disable=as_json, file=sys.stderr) as bar:
        result = run_speed(editor, n=facts, resolve_facts=resolve_facts, progress=bar.update)
    result.update(model=editor.loaded.name, layer=editor.layer, device=str(editor.loaded.device))
    text = "\n".join(f"{k:>18}: {v:.4f}" if isinstance(v, float) else f"{k:>18}: {v}" for k, v in result.items())
    emit(result, as_json, text)


def _methods(ctx, param, value: str) -> tuple[str, ...]:
    from bench.edits import METHODS, qf_settings

    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not names:
        raise click.BadParameter(f"choose from {', '.join(METHODS)} (comma-separated), not {value!r}")
    for name in names:
        if name not in METHODS:
            try:
                qf_settings(name)
            except ValueError as exc:
                raise click.BadParameter(str(exc)) from None
    return names


def plot_curves(result: dict, path: str) -> None:
    """Headline metrics against the number of edits, one line per method (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise click.ClickException("--plot needs matplotlib: pip install matplotlib") from exc
    keys = ("efficacy", "generalization", "specificity")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), sharey=True)
    for ax, key in zip(axes, keys):
        for name, method in result["methods"].items():
            points = [{"edits": 0, **result["pre"]}] + method["curve"]
            ax.plot([p["edits"] for p in points], [p.get(key, float("nan")) for p in points], marker="o", label=name)
        ax.set_title(key)
        ax.set_xlabel("edits")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend()
    config = result.get("config", {})
    fig.suptitle(f"{config.get('model', '')} layer {config.get('layer', '')}, {config.get('family', '')} "
                 f"({config.get('template', '')} template)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@bench.command("edits")
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help="CounterFact (EasyEdit) or zsRE (MEND) JSON file, read where it lies.")
@click.option("--format", "fmt", type=click.Choice(["auto", "counterfact", "zsre"]), default="auto", show_default=True,
              help="Record layout.")
@click.option("--limit", type=int, default=100, show_default=True, help="Number of edits N (well-formed records).")
@click.option("--offset", type=int, default=0, show_default=True, help="Index of the first record.")
@click.option("--method", "methods", default="qf", show_default=True, callback=_methods,
              help="Comma-separated methods: qf (the default solver), qf-paper (the paper's rule), "
                   "qf/SETTINGS (e.g. qf/p10/g1.5/auto: preserve 10, gain 1.5, automatic significance; "
                   "settings pP preserve, gG gain, fK focus, cK condition cap, qN phrasings, aN anchors, nN near "
                   "questions, bB soft anchors, sK spread, kW question keys, xN context prefixes, tT gate, rG row gains up to G, "
                   "uT subject gate, mM steer, eT answer gate, hC subject prime, wC whole value from cosine C, "
                   "yN refractory span N, centered (subject-centered gate), forms, auto, all), "
                   "ft (FT-L), icl (in context).")
@click.option("--template", type=click.Choice(["auto", "plain", "chat"]), default="auto", show_default=True,
              help="How edits are posed (auto: plain for CounterFact, chat for zsRE).")
@click.option("--batch", type=int, default=1, show_default=True, help="Facts per consolidation.")
@click.option("--eval-every", type=int, default=None, help="Also score the cases edited so far every K edits (curve); with --gen-tokens, also their greedy "
                   "answers (the --gen-cases among them) and the neighbours' fluency.")
@click.option("--gen-tokens", type=int, default=16, show_default=True, help="Greedy answer length cap (0: skip generation).")
@click.option("--gen-cases", type=click.IntRange(min=0), default=None,
              help="Greedy answers for the first K cases only (default: all); teacher-forced scores cover all.")
@click.option("--full-eval", is_flag=True,
              help="Score with full forward passes even where the cached last-layer scorer applies (a check; slow).")
@click.option("--ft-steps", type=int, default=25, show_default=True, help="FT-L step cap per consolidation.")
@click.option("--ft-lr", type=float, default=5e-4, show_default=True, help="FT-L Adam learning rate.")
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print the JSON result instead of the table.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Also write the JSON result here (gzip-compressed if the name ends in .gz).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="PNG of metrics against edits.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
@user_errors
def edits(data_path, fmt, limit, offset, methods, template, batch, eval_every, gen_tokens, gen_cases, full_eval, ft_steps,
          ft_lr, model_name, device, dtype, layer, system, as_json, out_path, plot_path, progress):
    """Sequential edits on CounterFact / zsRE: efficacy, generalization, specificity per method.

    At the last layer (the default) teacher-forced scores come from activations cached once per
    case (only the LM head runs after each edit), and QF variants share each fact's captures."""
    from bench.datasets import read_cases
    from bench.edits import format_capacity, format_curve, format_table, run_benchmark
    from bench.result_files import write_result
    from memory.architecture import num_layers

    cases, skipped, family = read_cases(data_path, fmt, limit, offset)
    for index, reason in skipped:
        click.echo(f"skipped record {index}: {reason}", err=True)
    template = template if template != "auto" else ("plain" if family == "counterfact" else "chat")
    editor = make_editor(model_name, device, dtype, layer, system)
    loaded = editor.loaded
    result = run_benchmark(editor, cases, template=template, methods=methods, batch=batch, eval_every=eval_every,
                           gen_tokens=gen_tokens, ft_steps=ft_steps, ft_lr=ft_lr, progress=tqdm_progress(progress),
                           gen_cases=gen_cases, cached_eval=not full_eval)
    result["config"] = {
        "data": str(Path(data_path).resolve()), "family": family, "template": template, "model": loaded.name,
        "layer": editor.layer, "device": str(loaded.device), "dtype": str(next(loaded.model.parameters()).dtype),
        "edits": len(cases), "offset": offset, "batch": batch, "methods": list(methods), "gen_tokens": gen_tokens,
        "gen_cases": gen_cases, "cached_eval": not full_eval and editor.layer == num_layers(loaded.model) - 1,
        "ft_steps": ft_steps, "ft_lr": ft_lr, "system": system, "keys_data": editor.config.keys_data,
        "skipped": [{"index": i, "reason": r} for i, r in skipped],
    }
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if out_path:
        write_result(out_path, text)
    if plot_path:
        plot_curves(result, plot_path)
    curve = f"\n\n{format_curve(result)}" if eval_every else ""
    click.echo(text if as_json else f"{format_table(result)}\n\n{len(cases)} {family} edits, {template} template, "
               f"{loaded.name} layer {editor.layer}{curve}\n\n{format_capacity(result)}")


@bench.command("extraction")
@model_options
@json_option
@user_errors
def bench_extraction(model_name, device, dtype, layer, system, as_json):
    """Precision and recall of the chat's fact detection on the built-in labelled set (50 messages)."""
    import tempfile

    from tqdm.auto import tqdm

    from agent.chat_model import QFChatModel
    from agent.extract import ChatModelExtractor
    from agent.session import open_ledger
    from bench.extraction import format_report, measure
    from bench.extraction_set import LABELLED

    with tempfile.TemporaryDirectory() as tmp:  # a throwaway ledger: nothing learned here
        ledger = open_ledger(f"sqlite:///{tmp}/extraction.db", model_name, device, dtype, layer, system,
                             solver=solver_settings())
        extractor = ChatModelExtractor(QFChatModel(ledger=ledger))
        with tqdm(total=len(LABELLED), desc="detecting", disable=as_json, file=sys.stderr) as bar:
            report = measure(lambda m: extractor.extract(m, []), progress=bar.update)
    report["model"] = ledger.loaded.name
    emit(report, as_json, f"{format_report(report)}\n({ledger.loaded.name})")
