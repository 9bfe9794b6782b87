"""Preserving what the model knows: the keys a matrix normally sees, and the metric built on them.

The K0-preserving QF solve (memory.qf, "Preserving what the model knows") needs
``C = K0 K0^T / n``: the covariance of the inputs of the edited ``down_proj`` on ordinary use.
We take ordinary use to be a chat assistant answering generic questions (memory.generic_chats,
shipped with the project): each exchange, rendered in the model's chat template, is run
teacher-forced once and every position's key is accumulated. Positions of the prefix every
exchange shares (the chat template's system prompt) are counted once, not once per exchange.
``C`` is computed once per (checkpoint, layer, system prompt, chats) and cached as safetensors
under ``$QF_HOME/keys`` (memory.paths); the next process loads it.

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

from memory.capture import Capture
from memory.generic_chats import CHATS
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
    solve) never waits for the key collection."""

    def __init__(self, strength: float, build: Callable[[], PreservingMetric]):
        self.strength, self._build, self._metric = strength, build, None

    def built(self) -> PreservingMetric:
        if self._metric is None:
            self._metric = self._build()
        return self._metric

    def keys(self, U_plain: torch.Tensor) -> torch.Tensor:
        return self.built().keys(U_plain)


def _shared_prefix(sequences: list[list[int]]) -> int:
    first = sequences[0]
    n = min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != first[i] for s in sequences):
            return i
    return n


def generic_chats(tokenizer, system: str | None = None) -> list[list[int]]:
    """Token ids of each shipped generic exchange: the question in the chat template, then the answer."""
    return [render_prompt(tokenizer, question, system) + answer_ids(tokenizer, answer) for question, answer in CHATS]


@torch.no_grad()
def collect_covariance(model, down_proj: str, sequences: list[list[int]],
                       progress: Progress | None = None) -> tuple[torch.Tensor, int]:
    """C = K0 K0^T / n over every position of ``sequences``: ((D, D) float64, n).

    The prefix all sequences share (the system prompt) is counted once."""
    tick = progress or (lambda d, t: (lambda n=1: None))
    skip = _shared_prefix(sequences)
    device = next(model.parameters()).device
    C, n = None, 0
    update = tick("collecting keys", len(sequences))
    for i, seq in enumerate(sequences):
        with Capture(model, [down_proj], stop=True) as cap:
            cap.run(input_ids=torch.tensor([seq], device=device), use_cache=False)
        K = cap.inputs[down_proj][0, 0 if i == 0 else skip:].double().cpu()  # (positions, D)
        C = K.T @ K if C is None else C.addmm_(K.T, K)
        n += K.shape[0]
        update(1)
    return C / n, n


def _digest(**what) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def key_covariance(loaded, layer: int, down_proj: str, system: str | None, weights_sha256: str,
                   progress: Progress | None = None) -> torch.Tensor:
    """The covariance of ``down_proj``'s keys on the generic chats, from the cache or collected now.

    Cached under $QF_HOME/keys per checkpoint, dtype, system prompt, layer and edited matrix.
    Collect it from the base weights: keys of a layer above an edited one would include that edit."""
    dtype = str(next(loaded.model.parameters()).dtype).replace("torch.", "")
    model_key = _digest(model=loaded.name, config=loaded.config_sha256(), dtype=dtype, system=system, chats=CHATS)
    path = data_dir() / "keys" / f"L{layer}-{_digest(model=model_key, layer=layer, weights=weights_sha256)}.safetensors"
    if not path.exists():
        chats = generic_chats(loaded.tokenizer, system)
        C, n = collect_covariance(loaded.model, down_proj, chats, progress)
        _atomic_write(path, lambda p: save_file({"covariance": C.float().contiguous()}, str(p),
                                                metadata={"positions": str(n)}))
        log.info("collected the key covariance of %s from %d positions -> %s", down_proj, n, path)
    # Always read back from the file (float32): a fresh collection and a cached one are bit-identical.
    return load_file(str(path))["covariance"]


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    write(partial)
    partial.replace(path)
