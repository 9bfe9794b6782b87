"""`qf convert`: QFt-convert a model, save it under the data dir, register it in the ledger.

The training itself is memory.qft; this module picks the data (a file, its validation file, or
the built-in corpus), names the result, and records the converted model as a ledger checkpoint
so facts can be learned on it with QF2 (`qf learn --method qf2 --model NAME`).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from agent.ledger_editor import LedgerEditor
from agent.session import open_store
from memory import architecture as arch
from memory.consolidate import EditorConfig
from memory.loading import LoadedModel, load_model
from memory.paths import models_dir
from memory.qft import RESUME_DIR, QFtConfig, Progress, convert, read_rows, split_rows
from memory.qft_corpus import generate_corpus

log = logging.getLogger(__name__)


def conversion_data(data_path: str | None, validation_path: str | None, holdout: int,
                    corpus_rows: int) -> tuple[list[dict], list[dict], str]:
    """(train rows, validation rows, where they came from)."""
    if data_path is None:
        rows = generate_corpus(corpus_rows, seed=0)
        train, validation = split_rows(rows, min(holdout, len(rows) // 10), seed=0)
        return train, validation, f"built-in corpus ({corpus_rows} rows)"
    rows = read_rows(data_path)
    beside = Path(data_path).with_name("validate.jsonl")
    if validation_path is None and beside.exists() and beside != Path(data_path):
        validation_path = str(beside)
    if validation_path is not None:
        return rows, read_rows(validation_path), f"{data_path} (validation {validation_path})"
    train, validation = split_rows(rows, min(holdout, len(rows) // 10), seed=0)
    return train, validation, f"{data_path} ({len(validation)} rows held out)"


def convert_model(model_name: str | None, *, layer: int | None = None, steps: int = 700, data_path: str | None = None,
                  validation_path: str | None = None, holdout: int = 50, corpus_rows: int = 3000,
                  out_name: str | None = None, beta: float = 1000.0, lr: float = 5e-5, checkpoint_every: int = 250,
                  readout_rows: int = 512, distill: float = QFtConfig.distill, eval_every: int = QFtConfig.eval_every,
                  surrogate_beta: float = QFtConfig.surrogate_beta,
                  resume: bool = False, restart: bool = False,
                  device: str = "auto", dtype: str = "auto", db: str | None = None,
                  progress: Progress | None = None,
                  caching: Callable[[int, int], None] | None = None) -> tuple[dict, int]:
    """Convert, save to ``$QF_HOME/models/NAME``, register; returns (the result as a dict, checkpoint id)."""
    if steps < 1:
        raise ValueError("--steps must be at least 1")
    train, validation, source = conversion_data(data_path, validation_path, holdout, corpus_rows)
    loaded = load_model(model_name, device=device, dtype=dtype)
    layer = arch.check_layer(loaded.model, arch.paper_layer(loaded.model) if layer is None else layer)
    config = QFtConfig(layer=layer, beta=beta, steps=steps, lr=lr, checkpoint_every=checkpoint_every,
                       readout_rows=readout_rows, distill=distill, eval_every=eval_every,
                       surrogate_beta=surrogate_beta)
    name = out_name or f"{Path(loaded.name).name}-qf2-L{layer}"
    if "/" in name or not name.strip():
        raise ValueError(f"--out takes a plain name (the model is saved under {models_dir()}), not {name!r}")
    out = models_dir() / name
    check_resume(out, resume, restart)
    log.info("converting %s with %s into %s", loaded.name, source, out)
    result = convert(loaded, train, validation, out, config, progress=progress, caching=caching)
    converted = LoadedModel(model=loaded.model, tokenizer=loaded.tokenizer, name=name, path=str(out), seconds=0.0)
    ledger = LedgerEditor(open_store(db), converted, EditorConfig())  # registers the checkpoint
    return {**asdict(result), "name": name, "data": source}, ledger.checkpoint_id


def check_resume(out: Path, resume: bool, restart: bool) -> None:
    """An interrupted run is continued only when asked (--resume) and discarded only when asked
    (--restart); either flag without such a run is refused."""
    if resume and restart:
        raise ValueError("--resume and --restart exclude each other")
    partial = out / RESUME_DIR
    if partial.exists():
        if restart:
            shutil.rmtree(partial)
        elif not resume:
            step = json.loads((partial / "state.json").read_text()).get("step", "?")
            raise ValueError(f"{out} holds an interrupted conversion (stopped at step {step}): "
                             "add --resume to continue it, or --restart to discard it")
    elif resume:
        raise ValueError(f"there is no interrupted conversion in {out} to resume; run without --resume")


def conversion_summary(result: dict) -> str:
    """What `qf convert` prints: time, losses, the readout fit, the validation answers side by side."""
    lines = [f"converted {result['base']['name']} at layer {result['layer']} in {result['seconds']:.0f}s: {result['out']}",
             f"validation loss {result['validation_loss_before']:.3f} (stock) -> {result['validation_loss']:.3f} (converted)"]
    if result["readout_error"] is not None:
        lines.append(f"readout refit on {result['readout_tokens']} tokens: relative error {result['readout_error']:.3f}")
    if result.get("chat_kl") is not None:
        lines.append(f"held-out chats (distill {result['distill']:g}): KL to the stock model {result['chat_kl']:.3f}, "
                     f"top-1 agreement {result['chat_top1']:.3f}")
    lines.append("validation answers (greedy):")
    lines += [line for answer in result["validation_answers"] or [] for line in _answer_lines(answer, "-")]
    lines.append("general requests (greedy):")
    lines += [line for answer in result.get("chat_answers") or [] for line in _answer_lines(answer, "(default)")]
    lines.append(f"use it with --model {result['name']}")
    return "\n".join(lines)


def _answer_lines(answer: dict, no_system: str) -> list[str]:
    """One side-by-side answer: the question (and its system prompt), the expected answer if the
    row has one, the stock and the converted model's replies."""
    system = next((m["content"] for m in answer["messages"] if m["role"] == "system"), "") or no_system
    lines = [f"  Q: {answer['messages'][-1]['content']}  (system: {system})"]
    if "expected" in answer:
        lines.append(f"     expected:  {answer['expected']}")
    return lines + [f"     stock:     {answer['answer_before']}", f"     converted: {answer['answer']}"]
