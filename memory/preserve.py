"""Preserving what the model knows: the keys a matrix normally sees, and the metric built on them.

The K0-preserving QF solve (memory.qf, "Preserving what the model knows") needs
``C = K0 K0^T / n``: the covariance of the inputs of the edited ``down_proj`` on ordinary use.
We take ordinary use to be a chat assistant answering generic questions (memory.generic_chats,
shipped with the project): each exchange, rendered in the model's chat template, is run
teacher-forced once and every position's key is accumulated. Positions of the prefix every
exchange shares (the chat template's system prompt) are counted once, not once per exchange.
``C`` is computed once per (checkpoint, layer, system prompt, chats) and cached as safetensors
under ``$QF_HOME/keys`` (memory.paths); the next process loads it.

More keys (``keys_data``). 110 exchanges give about 5,500 key positions on the 0.5B, against 4,864
key dimensions: the sample covariance then badly underestimates its small eigenvalues (with n
samples in D dimensions its smallest ones shrink by about (1 - sqrt(D/n))^2; measured on the 0.5B's
last layer: 1,468 of 4,864 eigenvalues below 1% of the mean), so the directions the metric treats
as unused may be an artefact of the sample. Chat rows of the ``{"messages": [...]}`` layout (e.g.
``../shared/data/company_iqa/train.jsonl``) add their question / answer pairs, rendered as ordinary
closed-book exchanges (the editor's system prompt, not the row's), to the shipped chats; the cache
key includes a digest of those pairs. Measured (docs/RESULTS.md, "More keys"): 78,167 positions
fix the spectrum but not specificity, so this stays an option.

Question keys (``question_weight``). The neighbours an edit breaks are mostly other questions of
fact, whose answering position is a handful of the thousands of positions above. A second
covariance ``Cq`` is collected at the last position of the shipped factual prompts
(memory.factual_prompts: plain completions and chat questions about many subjects) and mixed in,
each part normalized by its mean variance c: ``C = (C0 / c0 + w Cq / cq) / (1 + w)``. The solve
then reaches a fact's key through what sets it apart from questions of fact in general, its
subject, rather than through the question's form. Measured (docs/RESULTS.md, "Question keys"):
+12 points of CounterFact specificity after 100 edits on the 0.5B, 1-3 points less on zsRE, whose
neighbours are unrelated questions.

``PreservingMetric`` turns C and the strength p into ``M = I + p C / c`` (c = tr(C) / D), keeps
its Cholesky factor, and maps a fact's plain keys U' to ``Z = M^{-1} U'``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from memory import answer_gate, factual_prompts
from memory.capture import Capture, right_padded_ids
from memory.generic_chats import CHATS
from memory.near_questions import QuestionBank
from memory.packing import shared_prefix
from memory.paths import data_dir
from memory.prompts import answer_ids, render_prompt

log = logging.getLogger(__name__)

Progress = Callable[[str, int], Callable[[int], None]]  # (description, total) -> update(n)


class PreservingMetric:
    """M = I + p C / c as a Cholesky factor (float64); ``keys`` gives Z = M^{-1} U'."""

    def __init__(self, covariance: torch.Tensor, strength: float):
        if strength < 0:
            raise ValueError("the preserve strength must be >= 0")
        C = covariance.double()
        D = C.shape[0]
        scale = float(C.diagonal().sum()) / D
        if not scale > 0:
            raise ValueError("the key covariance is zero: no keys were collected")
        M = C * (strength / scale)
        M.diagonal().add_(1.0)
        self.strength = strength
        self._cholesky = torch.linalg.cholesky(M)

    def keys(self, U_plain: torch.Tensor) -> torch.Tensor:
        """Z^T = (M^{-1} U')^T for plain keys given as rows (T, D) -> (T, D) float64."""
        U = U_plain.double().to(self._cholesky.device)
        return torch.cholesky_solve(U.T, self._cholesky).T


class LazyMetric:
    """A PreservingMetric built on first use: loading a model to ask it something (no facts to
    solve) never waits for the key collection. ``question_weight``: the question keys' weight its
    covariance is built with, for the record."""

    def __init__(self, strength: float, build: Callable[[], PreservingMetric], question_weight: float = 0.0):
        self.strength, self._build, self._metric = strength, build, None
        self.question_weight = question_weight

    def built(self) -> PreservingMetric:
        if self._metric is None:
            self._metric = self._build()
        return self._metric

    def keys(self, U_plain: torch.Tensor) -> torch.Tensor:
        return self.built().keys(U_plain)


def generic_chats(tokenizer, system: str | None = None) -> list[list[int]]:
    """Token ids of each shipped generic exchange: the question in the chat template, then the answer."""
    return exchanges(tokenizer, CHATS, system)


def exchanges(tokenizer, pairs, system: str | None = None) -> list[list[int]]:
    """Token ids of (question, answer) pairs: the question in the chat template, then the answer."""
    return [render_prompt(tokenizer, question, system) + answer_ids(tokenizer, answer) for question, answer in pairs]


def key_data_pairs(path: str | Path) -> list[tuple[str, str]]:
    """(question, answer) of each chat row of a JSON-lines file ``{"messages": [..., user, assistant]}``:
    its last user message and the assistant reply after it (the row's system message is left out)."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                messages = json.loads(line)["messages"]
                (user, question), (assistant, answer) = ((m["role"], m["content"]) for m in messages[-2:])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}, line {number}: not a chat row {{\"messages\": [...]}} ({e})") from None
            if (user, assistant) != ("user", "assistant"):
                raise ValueError(f"{path}, line {number}: the last two messages must be a user's and the assistant's")
            if question.strip() and answer.strip():
                pairs.append((question.strip(), answer.strip()))
    if not pairs:
        raise ValueError(f"{path}: no chat rows")
    return pairs


def factual_sequences(tokenizer, system: str | None = None) -> list[list[int]]:
    """Token ids of the shipped factual prompts (memory.factual_prompts): each plain completion as
    text (tokenized as the benchmarks' plain template is), then each question in the chat template."""
    plain = [tokenizer(text).input_ids for text in factual_prompts.completions()]
    return plain + [render_prompt(tokenizer, question, system) for question in factual_prompts.questions()]


@torch.no_grad()
def collect_last_keys(model, module: str, sequences: list[list[int]], progress: Progress | None = None,
                      batch: int = 16, what: str = "collecting question keys") -> torch.Tensor:
    """The input of ``module`` (a down_proj: its key) at each sequence's last position (where a
    prompt is answered): (len(sequences), D) float32, in the sequences' order; ``batch`` sequences
    run together, right-padded."""
    keys: list[torch.Tensor | None] = [None] * len(sequences)
    for chunk, inputs in _batches(model, module, sequences, batch, progress, what):
        for row, i in enumerate(chunk):
            keys[i] = inputs[row, len(sequences[i]) - 1].float().cpu()
    return torch.stack(keys)


def _batches(model, module: str, sequences: list[list[int]], batch: int, progress: Progress | None, what: str):
    """Run ``sequences`` to ``module`` ``batch`` at a time, right-padded, shortest first; yields
    (the chunk's sequence indices, the module's inputs (B, length, D)), ticking ``what``'s progress."""
    update = (progress or (lambda d, t: (lambda n=1: None)))(what, len(sequences))
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths pad little
    for start in range(0, len(order), batch):
        chunk = order[start:start + batch]
        ids, mask = right_padded_ids([sequences[i] for i in chunk], pad=0)
        with Capture(model, [module], stop=True) as cap:
            cap.run(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        yield chunk, cap.inputs[module]
        update(len(chunk))


@torch.no_grad()
def collect_covariance(model, down_proj: str, sequences: list[list[int]],
                       progress: Progress | None = None, batch: int = 1, last_only: bool = False) -> tuple[torch.Tensor, int]:
    """C = K0 K0^T / n over every position of ``sequences``: ((D, D) float64, n).

    The prefix all sequences share (the system prompt) is counted once. ``batch`` sequences run
    together, right-padded (causal attention: a position never sees the padding after it).
    ``last_only``: only each sequence's last position (where a prompt is answered), n = len(sequences)."""
    if last_only:
        K = collect_last_keys(model, down_proj, sequences, progress, batch).double()
        return K.T @ K / K.shape[0], K.shape[0]
    skip = len(shared_prefix(sequences))
    C, n = None, 0
    for chunk, inputs in _batches(model, down_proj, sequences, batch, progress, "collecting keys"):
        for row, i in enumerate(chunk):
            first = 0 if i == 0 else skip
            K = inputs[row, first:len(sequences[i])].double().cpu()  # (positions, D)
            C = K.T @ K if C is None else C.addmm_(K.T, K)
            n += K.shape[0]
    return C / n, n


def _digest(**what) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def key_covariance(loaded, layer: int, down_proj: str, system: str | None, weights_sha256: str,
                   progress: Progress | None = None, keys_data: list[tuple[str, str]] = (),
                   question_weight: float = 0.0) -> torch.Tensor:
    """The covariance of ``down_proj``'s keys on the generic chats (and the ``keys_data`` pairs,
    see "More keys"), mixed with the factual prompts' question keys by ``question_weight`` (see
    "Question keys"; 0: none), each part from its cache or collected now.

    Cached under $QF_HOME/keys per checkpoint, dtype, system prompt, layer, edited matrix and data.
    Collect it from the base weights: keys of a layer above an edited one would include that edit."""
    if question_weight < 0:
        raise ValueError("the question keys' weight must be >= 0")
    dtype = str(next(loaded.model.parameters()).dtype).replace("torch.", "")
    checkpoint = {"model": loaded.name, "config": loaded.config_sha256(), "dtype": dtype, "system": system}
    what = {"chats": CHATS} if not keys_data else {"chats": CHATS, "data": _digest(pairs=list(keys_data))}
    model_key = _digest(**checkpoint, **what)
    path = data_dir() / "keys" / f"L{layer}-{_digest(model=model_key, layer=layer, weights=weights_sha256)}.safetensors"

    def generic():
        chats = generic_chats(loaded.tokenizer, system) + exchanges(loaded.tokenizer, keys_data, system)
        return collect_covariance(loaded.model, down_proj, chats, progress, batch=1 if not keys_data else 16)

    C = _cached(path, generic, down_proj)
    if question_weight == 0:
        return C
    prompts = {"completions": factual_prompts.completions(), "questions": factual_prompts.questions()}
    question_key = _digest(**checkpoint, **prompts)
    path = data_dir() / "keys" / f"L{layer}-q-{_digest(model=question_key, layer=layer, weights=weights_sha256)}.safetensors"
    Cq = _cached(path, lambda: collect_covariance(loaded.model, down_proj, factual_sequences(loaded.tokenizer, system),
                                                  progress, batch=16, last_only=True), down_proj)
    return mixed_covariance(C, Cq, question_weight)


def question_bank(loaded, layer: int, down_proj: str, system: str | None, weights_sha256: str,
                  progress: Progress | None = None) -> QuestionBank:
    """The shipped factual prompts' answering keys at ``down_proj`` (memory.near_questions), cached
    under $QF_HOME/keys like the covariances (collect them from the base weights)."""
    texts = factual_prompts.completions() + factual_prompts.questions()  # factual_sequences' order
    checkpoint = {"model": loaded.name, "config": loaded.config_sha256(), "system": system,
                  "dtype": str(next(loaded.model.parameters()).dtype).replace("torch.", "")}
    digest = _digest(model=_digest(**checkpoint, texts=texts), layer=layer, weights=weights_sha256)
    path = data_dir() / "keys" / f"L{layer}-bank-{digest}.safetensors"
    if not path.exists():
        keys = collect_last_keys(loaded.model, down_proj, factual_sequences(loaded.tokenizer, system), progress)
        _atomic_write(path, lambda p: save_file({"keys": keys.contiguous()}, str(p)))
        log.info("collected %d question keys of %s -> %s", keys.shape[0], down_proj, path)
    return QuestionBank(load_file(str(path))["keys"], texts)


def answer_mean(loaded, final_norm: str, system: str | None, weights_sha256: str,
                progress: Progress | None = None) -> torch.Tensor:
    """The mean answer state (N,) float32 of the shipped chat questions the answer gate is centered on
    (memory.answer_gate.mean_questions): the last layer's output at each question's last position
    (``final_norm``'s input), through the final norm. Cached under $QF_HOME/keys like the question
    keys; collect it from the base model (no gated neurons installed on the last MLP)."""
    questions = answer_gate.mean_questions()
    checkpoint = {"model": loaded.name, "config": loaded.config_sha256(), "system": system,
                  "dtype": str(next(loaded.model.parameters()).dtype).replace("torch.", "")}
    path = data_dir() / "keys" / f"answer-mean-{_digest(**checkpoint, questions=questions, weights=weights_sha256)}.safetensors"
    if not path.exists():
        sequences = [render_prompt(loaded.tokenizer, question, system) for question in questions]
        # the final norm's inputs: the last layer's outputs
        after_layer = collect_last_keys(loaded.model, final_norm, sequences, progress, what="collecting answer states")
        mean = answer_gate.answer_states(loaded.model, after_layer).mean(0)
        _atomic_write(path, lambda p: save_file({"mean": mean.contiguous()}, str(p)))
        log.info("collected the mean answer state of %d questions -> %s", len(questions), path)
    return load_file(str(path))["mean"]


def mixed_covariance(C: torch.Tensor, Cq: torch.Tensor, weight: float) -> torch.Tensor:
    """(C / c + w Cq / cq) / (1 + w), c and cq the mean variances (trace / D): the question keys'
    share of the metric is w / (1 + w) whatever the two parts' scales ("Question keys")."""
    D = C.shape[0]
    mixed = C / (float(C.diagonal().sum()) / D)  # in place from here on: one D x D matrix at a time
    mixed.add_(Cq.to(C.dtype), alpha=weight / (float(Cq.diagonal().sum()) / D))
    return mixed.div_(1.0 + weight)


def _cached(path: Path, collect: Callable[[], tuple[torch.Tensor, int]], down_proj: str) -> torch.Tensor:
    """The covariance saved at ``path``, collected (``collect() -> (C, positions)``) and saved first
    when missing. Always read back from the file (float32): a fresh collection and a cached one are
    bit-identical."""
    if not path.exists():
        C, n = collect()
        _atomic_write(path, lambda p: save_file({"covariance": C.float().contiguous()}, str(p),
                                                metadata={"positions": str(n)}))
        log.info("collected a key covariance of %s from %d positions -> %s", down_proj, n, path)
    return load_file(str(path))["covariance"]


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    write(partial)
    partial.replace(path)
