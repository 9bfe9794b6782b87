"""The answer gate: a fact's neurons fire only where the model was about to give the same kind of answer (issue 7).

Subject-gated neurons (memory.subject_gate) fire above a low threshold wherever their subject has
been named, so another question about an edited subject ("When was Oxinnovate founded?" after its
location was learned) can begin with the learned answer: after all 500 zsRE edits on the default
model 12% of such answers did (the benchmark's ``subject_leak_first``, 2% before editing). What the
MLP input at the answering position cannot tell apart, the base model's *answer state* there can:
the last layer's output through the final norm, ``f = final_norm(h + MLP(x))`` with the unedited MLP,
which is what the LM head reads. Centered on the mean answer state of shipped chat questions
(memory.factual_prompts, every ANSWER_MEAN_STRIDE-th), it keeps what kind of answer the model is
about to give and drops what every answer shares; on zsRE's chat questions it halves the other
questions a gate reaching 90% of the paraphrases would pass (0.15 against the MLP input's 0.31,
examples/paraphrase_or_other_question.py).

With ``answer_gate`` T > 0 a neuron fires only where the centered answer state's cosine with its
row's (``answer key``) is at least T, a step on top of its key's and subject's gate:

    a_t(x, f) = gate(cos(x, k_t), tau_t) * [cos(f - m, f_t - m) >= T]

A row's answer key is computed from what its plain pass captured, ``V' + W0 U'`` (the residual
entering the MLP plus the base MLP's output), so the ledger's rebuild derives it from the stored
rows with no forward pass, and the values' solve (memory.gated) applies the same step to the rows
that fire each other. It reads the LM head's input, so it works at the last layer alone.
"""

from __future__ import annotations

import torch
from torch import nn

from memory import architecture as arch
from memory import factual_prompts
from memory.subject_gate import unit_rows

# every this many-th shipped chat question gives the mean answer state: 260 of the 1,040, each relation
# asked of many subjects (the mean the gate was measured with, docs/RESULTS.md)
ANSWER_MEAN_STRIDE = 4


def mean_questions() -> list[str]:
    """The shipped chat questions whose answer states are averaged (the mean the answer keys are centered on)."""
    return factual_prompts.questions()[::ANSWER_MEAN_STRIDE]


def answer_keys(states: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Answer states (..., N) centered on ``mean`` (N,), unit rows, float32."""
    return unit_rows(states.float() - mean.float().to(states.device))


@torch.no_grad()
def answer_states(model: nn.Module, after_layer: torch.Tensor) -> torch.Tensor:
    """The answer states (..., N) float32 of residual streams after the last layer (..., N): the final
    norm's output, computed in the norm's dtype as the model computes it."""
    norm = arch.final_norm(model)
    weight = next(norm.parameters())
    return norm(after_layer.to(weight.device, weight.dtype)).float()


def layer_of(model: nn.Module, module: nn.Module) -> int:
    """The index of the decoder layer that holds ``module``."""
    for index, layer in enumerate(arch.decoder_layers(model)):
        if any(m is module for m in layer.modules()):
            return index
    raise ValueError("the module is not part of any decoder layer of the model")


class AnswerReader:
    """During a forward pass, the answer state at every position of the last layer, for the gated
    neurons on its MLP: a hook on the layer's MLP norm keeps the residual entering the MLP (h), and
    ``state(mlp_output)`` gives ``final_norm(h + mlp_output)``."""

    def __init__(self, model: nn.Module, mlp: nn.Module):
        layer = layer_of(model, mlp)
        if layer != arch.num_layers(model) - 1:
            raise ValueError(f"the answer gate reads the LM head's input: it works at the last layer "
                             f"({arch.num_layers(model) - 1}), not at layer {layer}")
        self.norm = arch.final_norm(model)
        self._h: torch.Tensor | None = None
        self._handle = model.get_submodule(arch.module_path(model, layer, "mlp_norm")).register_forward_pre_hook(self._see)

    def _see(self, module: nn.Module, args: tuple) -> None:
        self._h = args[0]

    def state(self, mlp_output: torch.Tensor) -> torch.Tensor:
        """The answer state (..., N) of the current forward pass, from the MLP's output without the neurons."""
        if self._h is None or self._h.shape != mlp_output.shape:
            raise RuntimeError("the MLP norm of the gated layer did not run before its MLP in this forward pass")
        return self.norm(self._h + mlp_output)

    def remove(self) -> None:
        self._handle.remove()
        self._h = None

