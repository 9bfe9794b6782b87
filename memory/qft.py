"""QFt, Quick Framework Transfer: convert a stock model so that QF2 applies at layer L (DESIGN.md §1).

The QF2 block (memory.qf2_block) at layer L blends the stock MLP out with alpha = 0.99 ** step
(0 below 0.01: fully converted after 459 steps) while layers L-1..L+1 learn, with AdamW at batch 1,
to do without it. The data are chat rows ``{"messages": [system, user, assistant]}``. The loss is
the causal-LM loss on the assistant's tokens only (its answer and the end-of-turn token): the
prompt is given at inference, never generated, so learning to predict system prompts and
questions would spend the few trainable layers on text the model never has to write.

At the step alpha reaches 0, down_proj of layer L is refit in closed form to reproduce the stock
layer's output from the firing pattern (memory.qft_readout; ``readout_rows=0`` skips it, as the
paper does): past that step almost no gradient passes the binary firing.

What makes it fast on CPU:

- Frozen prefix, cached. Layers below L-1 never change, so each row's hidden state entering
  layer L-1, and the keyword arguments every later layer is called with (rotary position
  embeddings, attention mask), are computed once, in one forward pass stopped before the last
  layer (lm_head never runs), and reused every epoch. A training step runs layers L-1..end only.
- Logits only where the loss is: the final norm and lm_head run on the answer rows alone.

The trainable layers are trained in float32 and cast back to the model's dtype at the end: an
AdamW step of lr 5e-5 moves a weight by about 5e-5, less than half a bf16 ulp for any weight
above 0.016 in magnitude, so in bf16 most updates would round away. Layers above L+1 are frozen but still run (backward
too): the loss is measured after them.

Resume: every ``checkpoint_every`` steps the trainable layers and AdamW's moments are written to
``OUT/resume/`` (safetensors, plus state.json); ``convert`` with the same base model, data and
settings continues from there. The example order is a function of (seed, epoch), so nothing else
is needed. On success the result is ``OUT`` as a Hugging Face checkpoint (safetensors, tokenizer,
``config.qf2``; load it with ``from_pretrained`` then ``memory.qf2_block.install_from_config``)
plus ``OUT/qft.json``, and ``OUT/resume/`` is removed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from memory import architecture as arch
from memory.loading import LoadedModel
from memory.prompts import Pass, answer_ids, end_of_turn_id, render_conversation
from memory.delta import tensor_sha256
from memory.generate import greedy_reply
from memory.qf2 import alpha_at, faded_step
from memory.qf2_block import install, installed
from memory.qft_readout import DEFAULT_RIDGE, fit_readout

log = logging.getLogger(__name__)

RESULT_JSON = "qft.json"
RESUME_DIR = "resume"
Progress = Callable[[int, float, float], None]  # (steps done, that step's loss, its alpha)


@dataclass(frozen=True)
class QFtConfig:
    layer: int | None = None  # None: the paper's relative depth (layer 23 of 28)
    beta: float = 1000.0  # the reference's training beta
    steps: int = 12_000  # the reference's; alpha is 0 from step 459 on
    lr: float = 5e-5  # the reference's AdamW learning rate, batch 1
    weight_decay: float = 0.01  # AdamW's default
    checkpoint_every: int = 500  # steps between resume checkpoints; 0: none
    # When alpha reaches 0, refit down_proj in closed form (memory.qft_readout) on the stock layer's
    # outputs over the first ``readout_rows`` training rows; 0 keeps the paper's recipe (no refit).
    readout_rows: int = 512
    readout_ridge: float = DEFAULT_RIDGE
    loss_window: int = 100  # the reported train loss is the mean over this many last steps
    seed: int = 0  # the example order is a permutation per epoch drawn from (seed, epoch)


@dataclass(frozen=True)
class QFtResult:
    out: str
    base: dict  # the base model's identity: name, path, config sha256
    layer: int
    beta: float
    alpha: float  # of the saved checkpoint: 0 once steps >= 459
    steps: int
    data_sha256: str  # rows_sha256 of the training rows
    train_loss: float | None  # mean of the last loss_window steps' losses
    validation_loss: float | None  # converted model, held-out rows
    validation_loss_before: float | None  # stock model, same rows
    seconds: float
    readout_error: float | None = None  # relative error of the closed-form readout on its tokens
    readout_tokens: int = 0
    validation_answers: list[dict] | None = None  # greedy answers to the validation rows, stock and converted


# --- rows ------------------------------------------------------------------------------
def read_rows(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_rows(rows: list[dict], path: str | Path) -> None:
    Path(path).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def rows_sha256(rows: list[dict]) -> str:
    """sha256 of the rows as canonical JSON lines: the data's identity, however it was stored."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update((json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n").encode())
    return digest.hexdigest()


def split_rows(rows: list[dict], holdout: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, validation): ``holdout`` rows drawn at random (seeded) are held out."""
    if not 0 <= holdout < len(rows):
        raise ValueError(f"cannot hold out {holdout} of {len(rows)} rows")
    held = set(random.Random(seed).sample(range(len(rows)), holdout))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def chat_pass(tokenizer, messages: list[dict[str, str]]) -> Pass:
    """The conversation up to the assistant header as the prompt; the answer + end of turn as targets."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a training row must end with the assistant's answer")
    prompt = render_conversation(tokenizer, messages[:-1])
    targets = answer_ids(tokenizer, messages[-1]["content"]) + [end_of_turn_id(tokenizer)]
    return Pass(input_ids=torch.tensor([prompt + targets[:-1]]), prompt_len=len(prompt), targets=tuple(targets))


# --- the frozen prefix and the trainable tail --------------------------------------------
def trainable_layers(model: nn.Module, layer: int) -> range:
    """L-1..L+1, clipped to the model's layers."""
    return range(max(layer - 1, 0), min(layer + 2, arch.num_layers(model)))


@dataclass
class CachedExample:
    """One row with its frozen prefix computed: all the layers from ``first`` on need."""

    hidden: torch.Tensor  # (1, S, D) hidden state entering layer ``first``
    layer_kwargs: list[dict]  # the keyword arguments of layers first..last, as the model called them
    rows: torch.Tensor  # (T,) positions whose next token is a target
    targets: torch.Tensor  # (T,) answer tokens + end of turn
    stock_output: torch.Tensor | None = None  # (S, D) the stock output of the converted layer, for the readout


class _PrefixDone(Exception):
    pass


@torch.no_grad()
def cache_prefix(model: nn.Module, p: Pass, first: int, output_of: int | None = None) -> CachedExample:
    """One forward pass, stopped as the last layer starts, recording what layers first.. receive
    (and, with ``output_of``, that layer's output: run on the stock model, the readout's target)."""
    layers = arch.decoder_layers(model)
    calls: list[tuple[torch.Tensor, dict]] = []
    outputs: list[torch.Tensor] = []

    def record(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        calls.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        if module is layers[-1] and output_of != len(layers) - 1:
            raise _PrefixDone

    def keep_output(module, args, output):
        outputs.append((output if isinstance(output, torch.Tensor) else output[0])[0].float())
        if module is layers[-1]:
            raise _PrefixDone

    handles = [layers[i].register_forward_pre_hook(record, with_kwargs=True) for i in range(first, len(layers))]
    if output_of is not None:
        handles.append(layers[output_of].register_forward_hook(keep_output))
    try:
        model(input_ids=p.input_ids.to(_device(model)), use_cache=False)
    except _PrefixDone:
        pass
    finally:
        for handle in handles:
            handle.remove()
    hidden = calls[0][0]
    targets = torch.tensor(p.targets, device=hidden.device)
    return CachedExample(hidden, [kwargs for _, kwargs in calls], p.rows.to(hidden.device), targets,
                         outputs[0] if outputs else None)


def weights_sha256(model: nn.Module) -> str:
    """sha256 over every named weight (name, dtype, shape, bytes): which base a conversion started from."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}={tensor_sha256(tensor)};".encode())
    return digest.hexdigest()


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _final_norm(model: nn.Module) -> nn.Module:
    """The norm between the last decoder layer and lm_head (``model.norm`` in every family of
    memory.architecture; it belongs in that table once a family names it otherwise)."""
    return model.get_decoder().norm


def tail_loss(model: nn.Module, example: CachedExample, first: int) -> torch.Tensor:
    """Mean cross-entropy over the answer rows, running layers first..last, the norm and lm_head."""
    h = example.hidden
    for layer, kwargs in zip(arch.decoder_layers(model)[first:], example.layer_kwargs):
        out = layer(h.to(_dtype(layer)), **kwargs)
        h = out if isinstance(out, torch.Tensor) else out[0]
    norm, head = _final_norm(model), model.get_output_embeddings()
    normed = norm(h[0, example.rows].to(_dtype(norm)))
    logits = head(normed.to(_dtype(head)))
    return F.cross_entropy(logits.float(), example.targets)


@torch.no_grad()
def mean_loss(model: nn.Module, examples: list[CachedExample], first: int) -> float | None:
    """Mean over rows of each row's answer loss; None without rows."""
    if not examples:
        return None
    return sum(float(tail_loss(model, e, first)) for e in examples) / len(examples)


@functools.lru_cache(maxsize=1)
def _epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    return random.Random(f"qft/{seed}/{epoch}").sample(range(n), n)


def example_index(step: int, n: int, seed: int) -> int:
    """Which row step ``step`` trains on: epoch by epoch, each a seeded permutation."""
    epoch, i = divmod(step, n)
    return _epoch_order(seed, epoch, n)[i]


# --- resume checkpoints ----------------------------------------------------------------
def _resume_key(config: QFtConfig, base: dict, data_sha256: str, layer: int) -> dict:
    """What must match for a resume checkpoint to continue this run (steps may grow)."""
    return {"base": base, "data_sha256": data_sha256, "layer": layer, "beta": config.beta, "lr": config.lr,
            "weight_decay": config.weight_decay, "seed": config.seed, "readout_rows": config.readout_rows,
            "readout_ridge": config.readout_ridge}


def _save_resume(out: Path, step: int, key: dict, losses: list[float], params: dict, optimizer) -> None:
    partial, final, old = out / f"{RESUME_DIR}.partial", out / RESUME_DIR, out / f"{RESUME_DIR}.old"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file({name: p.detach().contiguous() for name, p in params.items()}, str(partial / "trainable.safetensors"))
    state = optimizer.state_dict()["state"]  # {parameter index: {"step", "exp_avg", "exp_avg_sq"}}
    moments = {f"{i}.{name}": value.contiguous() for i, values in state.items() for name, value in values.items()}
    save_file(moments, str(partial / "optimizer.safetensors"))
    (partial / "state.json").write_text(json.dumps({"step": step, "key": key, "recent_losses": losses}))
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)


@torch.no_grad()
def _load_resume(out: Path, key: dict, params: dict, optimizer) -> tuple[int, list[float]]:
    """(steps done, recent losses) from OUT/resume, or (0, []) when there is none."""
    folder = out / RESUME_DIR
    if not (folder / "state.json").exists():
        return 0, []
    state = json.loads((folder / "state.json").read_text())
    differs = sorted(k for k in key if state["key"].get(k) != key[k])
    if differs:
        raise ValueError(
            f"{folder} is a checkpoint of another run (its {', '.join(differs)} differ); "
            "use another output directory or delete that folder to start afresh"
        )
    for name, value in load_file(str(folder / "trainable.safetensors")).items():
        params[name].copy_(value)
    moments: dict[int, dict] = {}
    for name, value in load_file(str(folder / "optimizer.safetensors")).items():
        index, field = name.split(".", 1)
        moments.setdefault(int(index), {})[field] = value
    optimizer.load_state_dict({"state": moments, "param_groups": optimizer.state_dict()["param_groups"]})
    log.info("resuming QFt from step %d (%s)", state["step"], folder)
    return state["step"], state["recent_losses"]


# --- the conversion --------------------------------------------------------------------
@contextlib.contextmanager
def _trainable_in_float32(model: nn.Module, tail: range):
    """Yield {name: parameter} of the layers in ``tail``, trainable and in float32, everything
    else frozen; each parameter's dtype and requires_grad are restored on exit."""
    was = {name: (p.dtype, p.requires_grad) for name, p in model.named_parameters()}
    prefixes = tuple(f"{arch.architecture_of(model).layers}.{i}." for i in tail)
    params = {name: p for name, p in model.named_parameters() if name.startswith(prefixes)}
    model.requires_grad_(False)
    try:
        with torch.no_grad():
            for p in params.values():
                p.data = p.data.float()
                p.requires_grad_(True)
        yield params
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.data = p.data.to(was[name][0])
                p.requires_grad_(was[name][1])


def _rows_to_cache(config: QFtConfig, n: int, done: int, refit: bool) -> tuple[list[int], list[int]]:
    """(training rows the remaining steps use, those of them the readout is fitted on), in order."""
    order = [example_index(step, n, config.seed) for step in range(config.steps)]
    readout = list(dict.fromkeys(order))[:config.readout_rows] if refit else []
    return list(dict.fromkeys(readout + order[done:])), readout


def _refit_readout(model: nn.Module, examples: list[CachedExample], first: int, layer: int, config: QFtConfig,
                   params: dict, optimizer) -> tuple[float, int]:
    """Write the closed-form readout into down_proj; its AdamW moments start afresh."""
    started = time.perf_counter()
    fit = fit_readout(model, examples, first, layer, config.beta, config.readout_ridge)
    down = params[f"{arch.module_path(model, layer, 'down_proj')}.weight"]
    with torch.no_grad():
        down.copy_(fit.weight.to(down.dtype))
    optimizer.state.pop(down, None)
    for example in examples:
        example.stock_output = None  # served its purpose: free the memory
    log.info("refit down_proj of layer %d on %d tokens in %.1fs: relative error %.4f",
             layer, fit.tokens, time.perf_counter() - started, fit.relative_error)
    return fit.relative_error, fit.tokens


def greedy_replies(model: nn.Module, tokenizer, rows: list[dict], max_new_tokens: int = 48) -> list[str]:
    """The greedy reply to each row's prompt (the row without its answer)."""
    return [greedy_reply(model, tokenizer, row["messages"][:-1], max_new_tokens).text for row in rows]


def _resume_step(out: Path) -> int:
    """The step OUT/resume stopped at (0 without one); _load_resume checks it belongs to this run."""
    state = out / RESUME_DIR / "state.json"
    return json.loads(state.read_text())["step"] if state.exists() else 0


def convert(
    loaded: LoadedModel,
    train_rows: list[dict],
    validation_rows: list[dict],
    out: str | Path,
    config: QFtConfig = QFtConfig(),
    progress: Progress | None = None,
    caching: Callable[[int, int], None] | None = None,
) -> QFtResult:
    """Convert ``loaded.model`` in place (QF2 block at ``config.layer``, layers L-1..L+1 trained)
    and save it to ``out``. Resumes from ``out/resume`` when a matching checkpoint is there.
    ``caching(done, total)`` reports the one-off pass over the frozen layers, ``progress`` the steps.

    The model is changed whatever happens; after an interruption its trainable layers are part
    trained (the resume checkpoint, not the model, is what to continue from).
    """
    start_time = time.perf_counter()
    model, tokenizer, out = loaded.model, loaded.tokenizer, Path(out)
    if installed(model) is not None:
        raise ValueError("this model already has a QF2 block: convert a stock model")
    if not train_rows:
        raise ValueError("no training rows")
    layer = arch.check_layer(model, arch.paper_layer(model) if config.layer is None else config.layer)
    tail = trainable_layers(model, layer)
    base = {"name": loaded.name, "path": loaded.path, "config_sha256": loaded.config_sha256(),
            "weights_sha256": weights_sha256(model)}
    data_sha256 = rows_sha256(train_rows)
    faded = faded_step()
    resumes_at = _resume_step(out)
    refit = config.readout_rows > 0 and resumes_at <= faded < config.steps
    needed, readout_ids = _rows_to_cache(config, len(train_rows), resumes_at, refit)
    # One pass per row through the frozen layers (on the stock model), reused every epoch; only
    # the rows this run trains on.
    validation = [cache_prefix(model, chat_pass(tokenizer, row["messages"]), tail.start) for row in validation_rows]
    train: dict[int, CachedExample] = {}
    for i, index in enumerate(needed):
        p = chat_pass(tokenizer, train_rows[index]["messages"])
        train[index] = cache_prefix(model, p, tail.start, output_of=layer if index in readout_ids else None)
        if caching is not None:
            caching(i + 1, len(needed))
    validation_before = mean_loss(model, validation, tail.start)
    answers_before = greedy_replies(model, tokenizer, validation_rows)

    block = install(model, layer, config.beta, alpha=1.0)
    key = _resume_key(config, base, data_sha256, layer)
    readout_error, readout_tokens = None, 0
    with _trainable_in_float32(model, tail) as params:
        optimizer = torch.optim.AdamW(params.values(), lr=config.lr, weight_decay=config.weight_decay)
        done, losses = _load_resume(out, key, params, optimizer)
        for step in range(done, config.steps):
            block.alpha = alpha_at(step)
            if refit and step == faded:
                readout_error, readout_tokens = _refit_readout(
                    model, [train[i] for i in readout_ids], tail.start, layer, config, params, optimizer)
            loss = tail_loss(model, train[example_index(step, len(train_rows), config.seed)], tail.start)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses = (losses + [loss.item()])[-config.loss_window:]
            if progress is not None:
                progress(step + 1, losses[-1], block.alpha)
            if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
                _save_resume(out, step + 1, key, losses, params, optimizer)

    block.alpha = alpha_at(config.steps)
    if block.alpha > 0:
        log.warning("QFt stopped at alpha %.3f: QF2 applies to a fully converted layer (>= %d steps)", block.alpha, faded)
    answers_after = greedy_replies(model, tokenizer, validation_rows)
    result = QFtResult(
        out=str(out), base=base, layer=layer, beta=config.beta, alpha=block.alpha, steps=config.steps,
        data_sha256=data_sha256, train_loss=sum(losses) / len(losses) if losses else None,
        validation_loss=mean_loss(model, validation, tail.start), validation_loss_before=validation_before,
        seconds=time.perf_counter() - start_time, readout_error=readout_error, readout_tokens=readout_tokens,
        validation_answers=[{"messages": row["messages"][:-1], "expected": row["messages"][-1]["content"],
                             "answer_before": before, "answer": after}
                            for row, before, after in zip(validation_rows, answers_before, answers_after)],
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / RESULT_JSON).write_text(json.dumps(asdict(result), indent=2))
    shutil.rmtree(out / RESUME_DIR, ignore_errors=True)
    return result
