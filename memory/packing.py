"""Several teacher-forced passes in one forward pass, packed side by side in one sequence.

A fact's capture needs two passes (instructed and plain), more with phrasings or context prefixes. On
a CPU one forward pass over a few dozen tokens costs far less than two passes over half as many (the
1.5B in float32 on 2 cores: 46 tokens 2.0 s, 2 x 46 in one batch 2.5 s), so they run as one. Packed
into one sequence (each pass attending only to its own tokens: a block-diagonal causal mask, its own
positions from 0) they run without the padding a batch would need, and a pass that begins with a
*shared prefix* (the chat template's system turn, the same for every plain pass) does not recompute
it: the prefix's keys and values are computed once and every pass that begins with it attends to
them, its own tokens placed after it. Each pass sees exactly what it would alone, to float rounding.

Valid only for a forward pass stopped at or below the layers the prefix's cache was computed with,
from the same weights: the caller (QFEditor.capture_passes) caches the prefix up to the edited layer,
which no edit of that layer's MLP changes, and computes it again when anything below has changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from memory.capture import Capture
from memory.generate import cache_argument


@dataclass(frozen=True)
class Packed:
    """One packed sequence: ``input_ids`` and ``position_ids`` (1, Q), the additive ``attention_mask``
    (1, 1, Q, P + Q) over the cached prefix's P positions then the packed ones, and for each pass where
    its token ``j`` sits: ``starts[i] + j - skipped[i]`` (``skipped[i]`` = P where it uses the prefix, else 0)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    starts: tuple[int, ...]
    skipped: tuple[int, ...]

    def at(self, i: int, positions: torch.Tensor) -> torch.Tensor:
        """Where pass ``i``'s positions (indices into its own sequence) sit in the packed one."""
        return positions - self.skipped[i] + self.starts[i]

    def inputs(self, model, prefix: PrefixCache, state: Hashable = None) -> tuple[dict, object]:
        """The forward pass's keyword arguments on ``model``'s device (with a fresh copy of ``prefix``'s
        cache where a pass attends to it: ``prefix.fresh(state)``), and what came with the cache (None
        where none is used)."""
        device = next(model.parameters()).device
        inputs = {"input_ids": self.input_ids.to(device), "position_ids": self.position_ids.to(device),
                  "attention_mask": self.attention_mask.to(device)}
        extra = None
        if any(self.skipped):
            inputs[cache_argument(type(model))], extra = prefix.fresh(state)
        return inputs, extra


def shared_prefix(sequences: list[list[int]]) -> list[int]:
    """The longest prefix every one of ``sequences`` begins with."""
    first = sequences[0]
    n = min(len(s) for s in sequences)
    return list(first[:next((i for i in range(n) if any(s[i] != first[i] for s in sequences)), n)])


def template_prefix(prompt_ids: Callable[[str], list[int]]) -> list[int]:
    """The tokens every prompt ``prompt_ids`` renders begins with (a chat template's system turn): the
    shared prefix of two prompts that differ from their first character."""
    return shared_prefix([prompt_ids("x"), prompt_ids("7")])


def pack(sequences: list[list[int]], first_rows: list[int], prefix: list[int], dtype: torch.dtype) -> Packed:
    """``sequences`` packed into one, each after the cached ``prefix`` where it begins with it and its
    first row to read (``first_rows``) lies after it; the mask in ``dtype`` (0: attend, its minimum: not),
    over the prefix's positions only where some pass attends to them (the cache is passed only then)."""
    P = len(prefix)
    skipped = tuple(P if P and seq[:P] == prefix and first >= P else 0 for seq, first in zip(sequences, first_rows))
    P = P if any(skipped) else 0  # no pass begins with it: no cache to attend to
    own = [seq[s:] for seq, s in zip(sequences, skipped)]
    starts = tuple(sum(len(o) for o in own[:i]) for i in range(len(own)))
    Q = sum(len(o) for o in own)
    allowed = torch.zeros(Q, P + Q, dtype=torch.bool)
    positions = torch.zeros(Q, dtype=torch.long)
    for o, start, s in zip(own, starts, skipped):
        block = slice(start, start + len(o))
        allowed[block, P + start:P + start + len(o)] = torch.ones(len(o), len(o), dtype=torch.bool).tril()
        allowed[block, :s] = True  # the prefix, for a pass that begins with it
        positions[block] = torch.arange(s, s + len(o))
    mask = torch.zeros(Q, P + Q, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    ids = torch.tensor([token for o in own for token in o])
    return Packed(ids[None], positions[None], mask[None, None], starts, skipped)


def pass_index(positions: torch.Tensor) -> torch.Tensor:
    """Which pass each position of a packed sequence belongs to, (B or 1, P) int64 from ``positions`` (B or
    1, P): 0 up to the first place where the positions do not increase (a new pass packed after the last,
    or a left pad's end), then 1, and so on. Hooks that carry something along a sequence (the subject
    match, the last input tokens) start it again there."""
    index = torch.zeros(positions.shape, dtype=torch.int64, device=positions.device)
    index[:, 1:] = (positions[:, 1:] <= positions[:, :-1]).cumsum(dim=1)
    return index


def prefix_states(model, prefix: list[int], names: list[str]) -> tuple[DynamicCache, dict[str, torch.Tensor]]:
    """The KV cache of ``prefix`` from a forward pass stopped once the modules ``names`` have run, and
    those modules' inputs (1, P, ...)."""
    cache = DynamicCache(config=model.config)
    with Capture(model, names, stop=True) as cap:
        cap.run(input_ids=torch.tensor([prefix], device=next(model.parameters()).device),
                **{cache_argument(type(model)): cache}, use_cache=True)
    return cache, dict(cap.inputs)


class PrefixCache:
    """The keys and values of one token prefix, computed by ``compute(ids) -> (cache, extra)`` (``extra``:
    whatever else the caller keeps of the prefix) and handed out as a fresh copy for each forward pass (a
    pass appends its own to the cache it is given). ``fresh(state)`` recomputes them whenever ``state``
    (what they depend on, e.g. the version counters of the weights below the edited layer) differs from
    when they were computed."""

    def __init__(self, prefix: list[int], compute):
        self.prefix = prefix
        self._compute = compute
        self._cache, self._state = None, None

    def fresh(self, state: Hashable = None):
        if self._cache is None or state != self._state:
            self._cache, self._state = self._compute(self.prefix), state
        return copy.deepcopy(self._cache)
