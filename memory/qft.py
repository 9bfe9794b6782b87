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

Distillation (memory.qft_distill, on by default): beside the answer loss, the KL from the stock
model's predictions (kept from the caching pass) at the answer positions, and one generic chat
exchange per step on that term alone, so the layers learn to stand in for the stock MLP on
ordinary use, not only on the training rows' answers.

The trainable layers are trained in float32 and cast back to the model's dtype at the end: an
AdamW step of lr 5e-5 moves a weight by about 5e-5, less than half a bf16 ulp for any weight
above 0.016 in magnitude, so in bf16 most updates would round away. Layers above L+1 are frozen but still run (backward
too): the loss is measured after them.

Resume (memory.qft_resume): every ``checkpoint_every`` steps the trainable layers and AdamW's
moments are written to ``OUT/resume/`` (safetensors, plus state.json); ``convert`` with the
same base model, data and settings continues from there (the chat-agreement points before the
interruption are not kept). The example order is a function of (seed, epoch), so nothing else
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
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from memory import architecture as arch
from memory.loading import LoadedModel
from memory.prompts import Pass, answer_ids, end_of_turn_id, render_conversation
from memory.delta import tensor_sha256
from memory.generate import greedy_reply
from memory.qf2 import alpha_at, faded_step
from memory.qf2_block import install, installed
from memory.qft_distill import check_rows, chat_rows, kl_to_teacher, top1_agreement
from memory.qft_readout import DEFAULT_RIDGE, fit_readout
from memory.qft_resume import RESUME_DIR, load_resume, resume_key, resume_step, save_resume

log = logging.getLogger(__name__)

RESULT_JSON = "qft.json"
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
    # Weight of the distillation term: KL(stock || converted) at each row's answer positions,
    # and one generic chat exchange per step on that term alone (memory.qft_distill). 0 is the
    # paper's loss (answers only). With surrogate_beta 10 it kept the 0.5B's chat ability where the
    # paper's loss did not (docs/QF2.md, 2026-12-01).
    distill: float = 1.0
    # Gradient of the firing during training: that of sigmoid(surrogate_beta * z) instead of the
    # vanishing one at beta (memory.qf2.firing); the forward pass is unchanged. 0: off (the paper's).
    surrogate_beta: float = 10.0
    eval_every: int = 100  # steps between measures of agreement with the stock model on held-out chats; 0: end only
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
    distill: float = 0.0
    surrogate_beta: float = 0.0
    # Agreement with the stock model on held-out generic chats (answer tokens, teacher forced):
    # mean KL(stock || converted) and the share of tokens whose top-1 prediction is the stock's.
    chat_kl: float | None = None
    chat_top1: float | None = None
    chat_curve: list[dict] | None = None  # {"step", "kl", "top1"} every eval_every steps
    chat_answers: list[dict] | None = None  # greedy answers to memory.qft_distill.CHAT_CHECKS, stock and converted


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
    teacher: torch.Tensor | None = None  # (S, D) the stock model's final norm output, for distillation
    answer_loss: bool = True  # False: a generic chat exchange, trained on the distillation term alone


class _PrefixDone(Exception):
    pass


@torch.no_grad()
def cache_prefix(model: nn.Module, p: Pass, first: int, output_of: int | None = None,
                 teacher: bool = False) -> CachedExample:
    """One forward pass, stopped as the last layer starts, recording what layers first.. receive
    (and, with ``output_of``, that layer's output: run on the stock model, the readout's target;
    with ``teacher``, the final norm's output: the stock model's predictions, lm_head not run)."""
    layers = arch.decoder_layers(model)
    calls: list[tuple[torch.Tensor, dict]] = []
    outputs: list[torch.Tensor] = []
    finals: list[torch.Tensor] = []

    def record(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        calls.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        if module is layers[-1] and output_of != len(layers) - 1 and not teacher:
            raise _PrefixDone

    def keep_output(module, args, output):
        outputs.append((output if isinstance(output, torch.Tensor) else output[0])[0].float())
        if module is layers[-1] and not teacher:
            raise _PrefixDone

    def keep_final(module, args, output):
        finals.append(output[0])
        raise _PrefixDone

    handles = [layers[i].register_forward_pre_hook(record, with_kwargs=True) for i in range(first, len(layers))]
    if output_of is not None:
        handles.append(layers[output_of].register_forward_hook(keep_output))
    if teacher:
        handles.append(arch.final_norm(model).register_forward_hook(keep_final))
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
                         outputs[0] if outputs else None, finals[0] if finals else None)


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


def _tail_output(model: nn.Module, example: CachedExample, first: int) -> torch.Tensor:
    """The last layer's output (S, D), running layers first..last from the cached hidden state."""
    h = example.hidden
    for layer, kwargs in zip(arch.decoder_layers(model)[first:], example.layer_kwargs):
        out = layer(h.to(_dtype(layer)), **kwargs)
        h = out if isinstance(out, torch.Tensor) else out[0]
    return h[0]


def _logits(model: nn.Module, h: torch.Tensor, normed: bool = False) -> torch.Tensor:
    """lm_head's float32 logits for last-layer outputs h (or, ``normed``, final norm outputs)."""
    norm, head = arch.final_norm(model), model.get_output_embeddings()
    if not normed:
        h = norm(h.to(_dtype(norm)))
    return head(h.to(_dtype(head))).float()


def tail_loss(model: nn.Module, example: CachedExample, first: int, distill: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the answer rows (unless the example has none to learn), plus
    ``distill`` x the mean KL to the stock model's predictions at those rows; runs layers
    first..last, then the norm and lm_head at the answer rows only."""
    h = _tail_output(model, example, first)
    logits = _logits(model, h[example.rows])
    loss = F.cross_entropy(logits, example.targets) if example.answer_loss else torch.zeros((), device=h.device)
    if distill and example.teacher is not None:
        with torch.no_grad():
            teacher = _logits(model, example.teacher[example.rows], normed=True)
        loss = loss + distill * kl_to_teacher(logits, teacher)
    return loss


@torch.no_grad()
def chat_agreement(model: nn.Module, examples: list[CachedExample], first: int) -> tuple[float, float]:
    """(mean KL(stock || model), top-1 agreement) over the answer rows of examples with a teacher."""
    kls, agreements = [], []
    for example in examples:
        logits = _logits(model, _tail_output(model, example, first)[example.rows])
        teacher = _logits(model, example.teacher[example.rows], normed=True)
        kls.append(float(kl_to_teacher(logits, teacher)))
        agreements.append(top1_agreement(logits, teacher))
    return sum(kls) / len(kls), sum(agreements) / len(agreements)


@torch.no_grad()
def mean_loss(model: nn.Module, examples: list[CachedExample], first: int) -> float | None:
    """Mean over rows of each row's answer loss; None without rows."""
    if not examples:
        return None
    return sum(float(tail_loss(model, e, first)) for e in examples) / len(examples)


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    return random.Random(f"qft/{seed}/{epoch}").sample(range(n), n)


def example_index(step: int, n: int, seed: int) -> int:
    """Which row step ``step`` trains on: epoch by epoch, each a seeded permutation."""
    epoch, i = divmod(step, n)
    return _epoch_order(seed, epoch, n)[i]


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


def _chat_point(model: nn.Module, held_chats: list[CachedExample], first: int, step: int) -> dict:
    kl, top1 = chat_agreement(model, held_chats, first)
    log.info("step %d: held-out chats, KL to the stock model %.4f, top-1 agreement %.3f", step, kl, top1)
    return {"step": step, "kl": kl, "top1": top1}


def greedy_replies(model: nn.Module, tokenizer, rows: list[dict], max_new_tokens: int = 48) -> list[str]:
    """The greedy reply to each row's prompt (the row without its answer)."""
    return [greedy_reply(model, tokenizer, row["messages"][:-1], max_new_tokens).text for row in rows]


@dataclass
class _CachedRows:
    validation: list[CachedExample]
    held_chats: list[CachedExample]  # with the stock model's predictions: the chat-ability measure
    chats: list[CachedExample]  # generic chats trained on the distillation term (none without it)
    train: dict[int, CachedExample]  # by index in the training rows


def _cache_rows(loaded: LoadedModel, first: int, layer: int, train_rows: list[dict], validation_rows: list[dict],
                needed: list[int], readout_ids: list[int], distilling: bool,
                caching: Callable[[int, int], None] | None) -> _CachedRows:
    """One pass per row through the frozen layers (on the stock model), reused every epoch; of the
    training rows, only those this run trains on. The readout's rows (and, when distilling, the
    chats) keep the stock output of ``layer``; with distillation every trained row keeps the stock
    model's predictions."""
    chat_train = chat_rows(held_out=False) if distilling else []
    chat_held = chat_rows(held_out=True)
    total, done = len(validation_rows) + len(chat_held) + len(chat_train) + len(needed), 0
    readout_layer = layer if readout_ids else None

    def cached(row: dict, output_of: int | None = None, teacher: bool = distilling) -> CachedExample:
        nonlocal done
        p = chat_pass(loaded.tokenizer, row["messages"])
        example = cache_prefix(loaded.model, p, first, output_of, teacher)
        done += 1
        if caching is not None:
            caching(done, total)
        return example

    return _CachedRows(
        validation=[cached(row, teacher=False) for row in validation_rows],
        held_chats=[cached(row, teacher=True) for row in chat_held],
        chats=[replace(cached(row, readout_layer), answer_loss=False) for row in chat_train],
        train={index: cached(train_rows[index], layer if index in readout_ids else None) for index in needed},
    )


@contextlib.contextmanager
def _surrogate_gradient(block, surrogate_beta: float):
    """Train through the block's firing with the gradient of sigmoid(surrogate_beta * z) (0: the
    true gradient); the block goes back to the plain firing on exit."""
    block.surrogate_beta = surrogate_beta or None
    try:
        yield
    finally:
        block.surrogate_beta = None


@dataclass
class _Trained:
    losses: list[float]  # the last loss_window steps'
    curve: list[dict]  # agreement with the stock model on held-out chats every eval_every steps
    readout_error: float | None = None
    readout_tokens: int = 0


def _train(model: nn.Module, block, tail: range, n_rows: int, rows: _CachedRows, readout_ids: list[int],
           config: QFtConfig, out: Path, key: dict, progress: Progress | None) -> _Trained:
    """The AdamW steps (from a matching resume checkpoint, if any), alpha faded step by step; the
    readout refit (when ``readout_ids``) at the step alpha reaches 0."""
    trained, first, faded = _Trained(losses=[], curve=[]), tail.start, faded_step()
    with _trainable_in_float32(model, tail) as params, _surrogate_gradient(block, config.surrogate_beta):
        optimizer = torch.optim.AdamW(params.values(), lr=config.lr, weight_decay=config.weight_decay)
        done, trained.losses = load_resume(out, key, params, optimizer)
        for step in range(done, config.steps):
            block.alpha = alpha_at(step)
            if readout_ids and step == faded:
                trained.readout_error, trained.readout_tokens = _refit_readout(
                    model, [rows.train[i] for i in readout_ids] + rows.chats, first, block.layer, config, params,
                    optimizer)
            loss = tail_loss(model, rows.train[example_index(step, n_rows, config.seed)], first, config.distill)
            if rows.chats:
                chat = rows.chats[example_index(step, len(rows.chats), config.seed)]
                loss = loss + tail_loss(model, chat, first, config.distill)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            trained.losses = (trained.losses + [loss.item()])[-config.loss_window:]
            if progress is not None:
                progress(step + 1, trained.losses[-1], block.alpha)
            if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
                save_resume(out, step + 1, key, trained.losses, params, optimizer)
            if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < config.steps:
                trained.curve.append(_chat_point(model, rows.held_chats, first, step + 1))
    return trained


def _side_by_side(model: nn.Module, tokenizer, rows: list[dict], before: list[str], expected: bool = False) -> list[dict]:
    """Each row's prompt with the greedy reply before conversion and now (and the row's own answer)."""
    after = greedy_replies(model, tokenizer, rows)
    return [{"messages": row["messages"][:-1], **({"expected": row["messages"][-1]["content"]} if expected else {}),
             "answer_before": b, "answer": a} for row, b, a in zip(rows, before, after)]


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
    resumes_at = resume_step(out)
    refit = config.readout_rows > 0 and resumes_at <= faded < config.steps
    needed, readout_ids = _rows_to_cache(config, len(train_rows), resumes_at, refit)
    rows = _cache_rows(loaded, tail.start, layer, train_rows, validation_rows, needed, readout_ids,
                       config.distill > 0, caching)
    validation_before = mean_loss(model, rows.validation, tail.start)
    answers_before = greedy_replies(model, tokenizer, validation_rows)
    checks_before = greedy_replies(model, tokenizer, check_rows())

    block = install(model, layer, config.beta, alpha=1.0)
    trained = _train(model, block, tail, len(train_rows), rows, readout_ids, config,
                     out, resume_key(config, base, data_sha256, layer), progress)
    block.alpha = alpha_at(config.steps)
    if block.alpha > 0:
        log.warning("QFt stopped at alpha %.3f: QF2 applies to a fully converted layer (>= %d steps)", block.alpha, faded)
    curve = trained.curve + [_chat_point(model, rows.held_chats, tail.start, config.steps)]
    losses = trained.losses
    result = QFtResult(
        out=str(out), base=base, layer=layer, beta=config.beta, alpha=block.alpha, steps=config.steps,
        data_sha256=data_sha256, train_loss=sum(losses) / len(losses) if losses else None,
        validation_loss=mean_loss(model, rows.validation, tail.start), validation_loss_before=validation_before,
        seconds=time.perf_counter() - start_time, readout_error=trained.readout_error,
        readout_tokens=trained.readout_tokens,
        validation_answers=_side_by_side(model, tokenizer, validation_rows, answers_before, expected=True),
        distill=config.distill, surrogate_beta=config.surrogate_beta,
        chat_kl=curve[-1]["kl"], chat_top1=curve[-1]["top1"], chat_curve=curve,
        chat_answers=_side_by_side(model, tokenizer, check_rows(), checks_before),
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / RESULT_JSON).write_text(json.dumps(asdict(result), indent=2))
    shutil.rmtree(out / RESUME_DIR, ignore_errors=True)
    return result
