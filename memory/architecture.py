"""Where the layers, MLPs and norms live, per ``config.model_type`` (DESIGN.md §5.4).

Module paths come from this table, never from substring checks on model names.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Architecture:
    layers: str  # dotted path from the model to the ModuleList of decoder layers
    mlp: str  # path inside a layer to the MLP
    mlp_norm: str  # path inside a layer to the norm whose *input* is the residual r
    down_proj: str  # path inside the MLP: N x D matrix, input = act(gate(h)) * up(h)
    up_proj: str
    gate_proj: str
    attn_norm: str = "input_layernorm"  # path inside a layer to the norm before its attention
    final_norm: str = "model.norm"  # dotted path from the model to the norm before the LM head


_GATED_MLP = Architecture(
    layers="model.layers",
    mlp="mlp",
    mlp_norm="post_attention_layernorm",
    down_proj="down_proj",
    up_proj="up_proj",
    gate_proj="gate_proj",
)

ARCHITECTURES: dict[str, Architecture] = {
    "qwen2": _GATED_MLP,
    "llama": _GATED_MLP,
    "mistral": _GATED_MLP,
    "qwen3": _GATED_MLP,
}

# The QF paper edits layer 23 of the 28-layer Qwen2.5-1.5B-Instruct.
PAPER_LAYER, PAPER_DEPTH = 23, 28


class UnsupportedModelError(ValueError):
    pass


def architecture_of(model: nn.Module) -> Architecture:
    model_type = getattr(model.config, "model_type", None)
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported types: {supported}"
        ) from None


def num_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def paper_layer(model: nn.Module) -> int:
    """Layer 23 for 28 layers (the paper), the same relative depth otherwise."""
    n = num_layers(model)
    return min(n - 1, round(PAPER_LAYER * n / PAPER_DEPTH))


def default_layer(model: nn.Module) -> int:
    """The last layer: measured, not the paper's 23 (see docs/LAYERS.md).

    On Qwen2.5-Coder-1.5B-Instruct an edit at layer 23 meets its constraint (the residual after
    layer 23 matches the instructed pass to 1e-6) yet the closed-book answer does not change:
    layers 24..27 still attend to the prompt, where the instruction was, and that context is
    gone in the plain pass. At the last layer nothing downstream attends, so matching the
    residual matches the logits: the exact question, the paraphrase and the control all pass.
    """
    return num_layers(model) - 1


def final_norm(model: nn.Module) -> nn.Module:
    """The norm before the LM head."""
    return model.get_submodule(architecture_of(model).final_norm)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(architecture_of(model).layers)


def check_layer(model: nn.Module, layer: int) -> int:
    n = num_layers(model)
    if not 0 <= layer < n:
        raise ValueError(f"layer {layer} is out of range: this model has layers 0..{n - 1}")
    return layer


def module_path(model: nn.Module, layer: int, part: str) -> str:
    """Full dotted name of ``part`` ('mlp', 'mlp_norm', 'attn_norm', 'down_proj', 'up_proj', 'gate_proj')."""
    arch = architecture_of(model)
    base = f"{arch.layers}.{check_layer(model, layer)}"
    if part in ("mlp", "mlp_norm", "attn_norm"):
        return f"{base}.{getattr(arch, part)}"
    return f"{base}.{arch.mlp}.{getattr(arch, part)}"
