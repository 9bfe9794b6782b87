"""QFt's resume checkpoints: an interrupted conversion continues bit for bit where it stopped.

Every ``checkpoint_every`` steps the trainable layers and AdamW's moments are written to
``OUT/resume/`` (safetensors, plus state.json with the step, the recent losses and the run's key:
base identity, data sha256, layer and every setting the steps depend on). A checkpoint of another
run is refused, never continued. The write goes to ``resume.partial`` and is swapped in, so an
interruption during the write leaves the previous checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file
import torch

log = logging.getLogger(__name__)

RESUME_DIR = "resume"


def resume_key(config, base: dict, data_sha256: str, layer: int) -> dict:
    """What must match for a resume checkpoint to continue this run (steps may grow)."""
    return {"base": base, "data_sha256": data_sha256, "layer": layer, "beta": config.beta, "lr": config.lr,
            "weight_decay": config.weight_decay, "seed": config.seed, "readout_rows": config.readout_rows,
            "readout_ridge": config.readout_ridge, "distill": config.distill,
            "surrogate_beta": config.surrogate_beta}


def save_resume(out: Path, step: int, key: dict, losses: list[float], params: dict, optimizer) -> None:
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
def load_resume(out: Path, key: dict, params: dict, optimizer) -> tuple[int, list[float]]:
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


def resume_step(out: Path) -> int:
    """The step OUT/resume stopped at (0 without one); load_resume checks it belongs to this run."""
    state = out / RESUME_DIR / "state.json"
    return json.loads(state.read_text())["step"] if state.exists() else 0
