"""Subject-gated neurons: a fact's neurons fire more readily once its subject has been named (issue 7).

The key-gated neurons (memory.gated) read one thing, the MLP input at the position being predicted,
and on CounterFact that key does not tell a paraphrase from a neighbour: "Toko Yasuda is incredible
at" (the fact's subject, another wording) is farther from the fact's key than "John Lennon performs
on the" (another subject, the same relation), at every layer (docs/RESULTS.md, "Key separation").
What does tell them apart is the subject: the paraphrase names it, the neighbour does not.

Here each fact with a known subject also has a *subject key*: the normalized input of layer
``SUBJECT_LAYER``'s attention (its input norm's output) at the subject's last token in the plain pass
of its query. At every position p of a forward pass the subject is *named* when some position up to
p matches the key, ``max_{q <= p} cos(h_q, key) >= SUBJECT_MATCH``; while it is, the fact's neurons
fire above the lower threshold ``tau_named`` instead of the gate's tau. Layer 1 is where the key is
still the subject's tokens in their immediate context: from layer 2 on (the 1.5B; 3 on the 0.5B) the
first position's representation is the same for every prompt (the attention sink), so a subject at
the start of a plain prompt would match every prompt there (examples/subject_gate_separation.py).

At inference the match is a running maximum along the sequence, carried between the calls of a
generation with a KV cache (a call whose cache is empty, or does not continue where the last call
ended, starts a new sequence), and started again wherever the positions start again: several passes
packed into one sequence (memory.packing) each see only their own subjects. In the values'
solve (memory.gated) a fact's rows name its own subject and another fact's subject when the two
subject keys match.
"""

from __future__ import annotations

import torch
from torch import nn

from memory import architecture as arch
from memory.capture import Capture
from memory.generate import continued_state
from memory.packing import pass_index

SUBJECT_LAYER = 1  # the layer whose input norm's output gives the subject keys (see above)
# cos at or above which a position names a fact's subject: the 1.5B's paraphrases of 200 CounterFact
# cases match their own subject at 0.99 of the time, their neighbours any of the 200 at 0.04
SUBJECT_MATCH = 0.8


def find_tokens(ids: list[int], part: list[int]) -> int | None:
    """The index of the last token of the last occurrence of ``part`` in ``ids``; None if absent."""
    for start in range(len(ids) - len(part), -1, -1):
        if part and ids[start:start + len(part)] == part:
            return start + len(part) - 1
    return None


def subject_position(tokenizer, ids: list[int], subject: str) -> int | None:
    """Where ``subject`` ends in the prompt ``ids`` (as tokenized after a space, then bare); None when
    its tokens do not occur there (it was tokenized together with a neighbouring character)."""
    for text in (" " + subject, subject):
        at = find_tokens(ids, tokenizer(text, add_special_tokens=False).input_ids)
        if at is not None:
            return at
    return None


def subject_norm_name(model: nn.Module) -> str:
    """The input norm of the subject layer, whose output the subject keys live in."""
    return arch.module_path(model, SUBJECT_LAYER, "attn_norm")


def subject_norm(model: nn.Module) -> nn.Module:
    return model.get_submodule(subject_norm_name(model))


@torch.no_grad()
def subject_key(model: nn.Module, ids: list[int], position: int) -> torch.Tensor:
    """The subject key (N,) float32, unit length: the subject layer's normalized input at ``position``
    of the prompt ``ids``, from a forward pass stopped there."""
    name = subject_norm_name(model)
    device = next(model.parameters()).device
    with Capture(model, [name], stop=True) as cap:
        cap.run(input_ids=torch.tensor([ids[:position + 1]], device=device), use_cache=False)
    return subject_states(model, cap.inputs[name][0, position]).cpu()


def unit_rows(X: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (float32); a zero row stays zero. (Here, below memory.gated, which
    uses it too.)"""
    X = X.float()
    return X / X.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def subject_states(model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The subject layer's normalized inputs, unit rows (..., N) float32, from its residual inputs h."""
    return unit_rows(subject_norm(model)(h))


def named_at(states: torch.Tensor, keys: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """Which of the subject keys (S, N) are named up to each of ``positions`` of one sequence whose
    subject-layer states (P, N) (unit rows) are given -> (len(positions), S) bool."""
    best = (states.float() @ keys.T.to(states.device)).cummax(dim=0).values
    return best[torch.tensor(positions, device=best.device)] >= SUBJECT_MATCH


def running_match(cos: torch.Tensor, positions: torch.Tensor | None = None,
                  carried: torch.Tensor | None = None) -> torch.Tensor:
    """The best cosine so far at each position (B, P, S) of ``cos`` (B, P, S): the running maximum along
    the sequence, started again wherever ``positions`` (B or 1, P) do not increase (a new pass packed
    into the sequence, memory.packing; a left pad), and continuing ``carried`` (B, S) (the best before
    this call) up to the first such start."""
    passes = pass_index(positions.to(cos.device)) if positions is not None and cos.shape[1] > 1 else None
    if passes is None or not passes[:, -1].any():
        best = cos.cummax(dim=1).values
        return best if carried is None else torch.maximum(best, carried[:, None])
    # A segmented running maximum: offset each segment above every cosine of the ones before it (cosines
    # lie in [-1, 1]); in float64 the offsets leave the float32 cosines exact.
    segment = passes[..., None].expand_as(cos)
    offset = 4.0 * segment.double()
    best = ((cos.double() + offset).cummax(dim=1).values - offset).to(cos.dtype)
    if carried is not None:
        best = torch.where(segment == 0, torch.maximum(best, carried[:, None]), best)
    return best


class SubjectPresence:
    """Per position, whether each of the subject keys (S, N) has been named so far in the sequence:
    a forward pre-hook on the subject layer computes it, the gated neurons read ``named``."""

    def __init__(self, model: nn.Module, keys: torch.Tensor):
        self.keys = keys
        self.norm = subject_norm(model)
        self.named: torch.Tensor | None = None  # (B, P, S) bool, for the positions of the current call
        self._running: torch.Tensor | None = None  # (B, S) the best cosine so far, carried between cached calls
        self._ended = 0  # the sequence length after the last call: a cached call continues it only from there
        layer = arch.decoder_layers(model)[SUBJECT_LAYER]
        self._handle = layer.register_forward_pre_hook(self._see, with_kwargs=True)

    def _see(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        h = args[0] if args else kwargs["hidden_states"]
        cos = unit_rows(self.norm(h)) @ self.keys.T.to(h.device)  # (B, P, S)
        past, carried = continued_state(kwargs, SUBJECT_LAYER, self._ended, self._running, cos.shape[0])
        best = running_match(cos, kwargs.get("position_ids"), carried)
        self._running, self._ended = best[:, -1], past + cos.shape[1]
        self.named = best >= SUBJECT_MATCH

    def remove(self) -> None:
        self._handle.remove()
        self.named = self._running = None
