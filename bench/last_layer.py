"""Teacher-forced scores after edits of the last layer's down_proj, without a forward pass.

When every edit a method makes is confined to ``down_proj`` of the model's last layer (QF at its
default layer, FT-L on the same matrix), nothing upstream of that matrix changes: at each scored
position the residual entering the last MLP (``h``, the input of its norm) and the input of
down_proj (``u``) are those of the base model. The logits there are then

    lm_head(final_norm(h + W u))

for the live weight W. ``LastLayerScorer`` runs the model once per case, cut short at the last
down_proj (the sequences ``bench.edits.teacher_forced`` scores, packed into one after the cached
chat system turn: memory.packing), keeps h and u at
the scored positions, and afterwards scores any W with the LM head alone (10 zsRE cases on the
0.5B: 2.1 s against 17.4 s of forward passes, docs/RESULTS.md), which is what makes 1,000-edit
curves affordable on a CPU. The full forward pass stays the reference (--full-eval;
tests/test_bench_last_layer.py compares both).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench import metrics as M
from memory import architecture as arch
from memory import gated
from memory.capture import Capture
from memory.packing import PrefixCache, pack, prefix_states
from memory.refractory import row_windows
from memory.subject_gate import named_at, subject_norm_name, subject_states


@dataclass(frozen=True)
class _Rows:
    """One scored continuation: h (k, N) and u (k, D) at the k positions predicting ``targets``, and
    the subject layer's states (P, N) up to the last of those ``positions`` (subject-gated neurons
    read which subjects were named before each: memory.subject_gate), and the last input tokens at each
    position (k, RECENT_TOKENS) (refractory neurons read them: memory.refractory)."""

    h: torch.Tensor
    u: torch.Tensor
    targets: tuple[int, ...]
    states: torch.Tensor
    positions: tuple[int, ...]
    recent: torch.Tensor


class LastLayerScorer:
    def __init__(self, model, parameter: str, prefix: list[int] | tuple[int, ...] = ()):
        """``prefix``: the tokens every prompt of the template begins with (Poser.shared_prefix: the chat
        template's system turn), computed once and attended to from its cache (memory.packing): like
        every capture here, valid while nothing below the last down_proj changes."""
        layer = arch.num_layers(model) - 1
        self.down_name = arch.module_path(model, layer, "down_proj")
        if parameter != f"{self.down_name}.weight":
            raise ValueError(f"the cached scorer needs edits of {self.down_name}, not {parameter}")
        self.model = model
        self.norm_name = arch.module_path(model, layer, "mlp_norm")
        self.down_proj = model.get_submodule(self.down_name)
        self.mlp = model.get_submodule(arch.module_path(model, layer, "mlp"))
        self.mlp_norm = model.get_submodule(self.norm_name)
        self.weight = model.get_parameter(parameter)
        self.final_norm = arch.final_norm(model)
        self.head = model.get_output_embeddings()
        self.subject_name = subject_norm_name(model)
        self._rows: dict[Hashable, dict[str, _Rows]] = {}
        self._prefix = PrefixCache(list(prefix), self._prefix_states)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._rows

    @torch.no_grad()
    def prepare(self, key: Hashable, tokens: dict[str, tuple[list[int], list[int]]]) -> None:
        """Capture h and u for ``tokens`` (name -> (prompt ids, continuation ids)) at the current
        weights below the last down_proj, which no edit of it changes: one forward pass, the sequences
        packed after the cached prefix where they begin with it (memory.packing)."""
        pairs = list(tokens.values())
        packed = pack([prompt + cont[:-1] for prompt, cont in pairs], [len(prompt) - 1 for prompt, _ in pairs],
                      self._prefix.prefix, self.model.dtype)
        inputs, turn_states = packed.inputs(self.model, self._prefix)
        with Capture(self.model, [self.subject_name, self.norm_name, self.down_name], stop=True) as cap:
            cap.run(**inputs, use_cache=False)
        h, u = cap.inputs[self.norm_name][0], cap.inputs[self.down_name][0]
        states = subject_states(self.model, cap.inputs[self.subject_name][0]).to(h.dtype)  # halved memory in bf16
        self._rows[key] = {}
        for i, (name, (prompt, cont)) in enumerate(tokens.items()):
            rows = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(cont))
            at = packed.at(i, rows).to(h.device)
            own = states[packed.at(i, torch.arange(packed.skipped[i], int(rows[-1]) + 1)).to(h.device)]
            seen = torch.cat([turn_states.to(own), own]) if packed.skipped[i] else own  # positions 0 .. the last row
            self._rows[key][name] = _Rows(h[at].clone(), u[at].clone(), tuple(cont), seen.clone(), tuple(rows.tolist()),
                                          row_windows(prompt + cont[:-1], len(cont)))

    def _prefix_states(self, prefix: list[int]):
        """The KV cache of ``prefix`` up to the last down_proj, and its subject-layer states (P, N)."""
        cache, inputs = prefix_states(self.model, prefix, [self.subject_name, self.down_name])
        return cache, subject_states(self.model, inputs[self.subject_name][0])

    def scores(self, key: Hashable) -> dict[str, M.TokenScores]:
        """The teacher-forced scores of a prepared case under the live weight."""
        return self.scores_many([key])[key]

    @torch.no_grad()
    def scores_many(self, keys: list[Hashable], group: int = 64) -> dict[Hashable, dict[str, M.TokenScores]]:
        """Scores of many prepared cases, ``group`` cases per LM-head product: the head's weight
        (151,936 x 896 on the 0.5B) is read once per group, not once per case."""
        out: dict[Hashable, dict[str, M.TokenScores]] = {}
        for start in range(0, len(keys), group):
            chunk = [(key, name, r) for key in keys[start:start + group] for name, r in self._rows[key].items()]
            h = torch.cat([r.h for _, _, r in chunk])
            u = torch.cat([r.u for _, _, r in chunk])
            # As the model computes it: down_proj in its weight's dtype, the sum in the residual's.
            mlp = F.linear(u.to(self.weight.dtype), self.weight, self.down_proj.bias).to(h.dtype)
            patch = gated.installed_patch(self.mlp)
            if patch is not None:  # key-gated neurons on the last MLP (memory.gated): they read its input
                neurons, named = patch.neurons, None
                if neurons.subject_gated:
                    named = torch.cat([named_at(r.states, neurons.subject_keys, list(r.positions)) for _, _, r in chunk])
                answer = self.final_norm(h + mlp) if neurons.answer_gated else None  # the base model's answer state
                recent = torch.cat([r.recent[:, -neurons.refractory:] for _, _, r in chunk]).to(h.device) \
                    if neurons.refractory_gated else None
                mlp = mlp + neurons.output(self.mlp_norm(h), named, answer, recent)
            logits = self.head(self.final_norm(h + mlp)).float().cpu()
            row = 0
            for key, name, r in chunk:
                out.setdefault(key, {})[name] = M.token_scores(logits[row:row + len(r.targets)], r.targets)
                row += len(r.targets)
        return out
