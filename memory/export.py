"""Exports of the consolidated model: a plain Hugging Face checkpoint, or a PEFT LoRA adapter.

The adapter carries each edited parameter's live delta dW = left @ right as a LoRA pair with
``lora_B = left`` (N, r), ``lora_A = right`` (r, D) and ``lora_alpha = r`` (scaling 1), so
``PeftModel.from_pretrained(base, dir)`` reproduces the edited weights on the base model and any
engine that serves LoRA adapters can serve the learned facts.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from memory.delta import LowRankDelta
from memory.loading import LoadedModel

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def export_hf(loaded: LoadedModel, out: Path) -> Path:
    """The live model (edited matrices in float32) and its tokenizer, loadable with from_pretrained."""
    out.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    return out


def _module_of(parameter: str) -> str:
    if not parameter.endswith(".weight"):
        raise ValueError(f"cannot export a delta on {parameter!r} as LoRA: not a Linear weight")
    return parameter[: -len(".weight")]


def export_peft(deltas: list[LowRankDelta], base_model: str, out: Path) -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` for the given live deltas."""
    deltas = [d for d in deltas if d.rank > 0]
    if not deltas:
        raise ValueError("no active facts: there is nothing to export as an adapter")
    out.mkdir(parents=True, exist_ok=True)
    tensors, ranks = {}, {}
    for delta in deltas:
        module = _module_of(delta.parameter)
        if not delta.is_finite():
            raise ValueError(f"the delta on {delta.parameter} is not finite")
        tensors[f"base_model.model.{module}.lora_A.weight"] = delta.right.to(torch.float32).contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = delta.left.to(torch.float32).contiguous()
        ranks[module] = delta.rank
    first = next(iter(ranks.values()))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": first,
        "lora_alpha": first,
        "rank_pattern": ranks,
        "alpha_pattern": ranks,  # alpha = r everywhere: scaling 1, the delta exactly
        "target_modules": sorted(ranks),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt", "producer": "qf"})
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return out
