"""Load a model once per process: a registry name, a local Hugging Face directory or a hub id.

Registry models (memory.registry) are joined from their chunk packages, verified, dequantized
from GGUF through transformers and saved as a safetensors cache under ``$QF_HOME/models/NAME``;
later loads read that cache (about a second) and never touch the network.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from memory import registry
from memory.paths import models_dir
from memory.qf2_block import install_from_config

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # what the user asked for: registry name, path or hub id
    path: str  # where the weights were read from
    seconds: float  # load time

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def config_sha256(self) -> str:
        cfg = self.model.config.to_dict()
        for volatile in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
            cfg.pop(volatile, None)
        return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()


def resolve_device(device: str = "auto") -> torch.device:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, config_dtype: torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if DTYPES[dtype] is not None:
        return DTYPES[dtype]
    if isinstance(config_dtype, str):
        config_dtype = getattr(torch, config_dtype, None)
    if config_dtype == torch.float32:
        return torch.float32
    if device.type == "cpu":
        # float16 is slow and fragile on CPU. bfloat16 (what these checkpoints were trained in,
        # half the memory) where the CPU computes it natively; elsewhere float32, which there is
        # about 3x faster: 0.8 s against 2.2 s for a 40-token forward of the 0.5B model on a
        # 2-core AVX2 EPYC (2026-11-25).
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.bfloat16 if config_dtype in (None, torch.bfloat16) else config_dtype


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether the CPU has bf16 instructions (AVX512-BF16 or AMX-BF16), read from /proc/cpuinfo;
    True where that cannot be read (keep the smaller dtype when in doubt)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return True
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def registry_cache(entry: registry.RegisteredModel, progress: bool = True) -> Path:
    """The safetensors cache dir of a registry model, building it from the chunks if needed."""
    cache = models_dir() / entry.name
    if (cache / "config.json").exists():
        return cache
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = registry.join_chunks(entry, models_dir() / f"{entry.name}.gguf", progress=progress)
    tmp = cache.with_name(cache.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        log.info("dequantizing %s (once; later loads read the safetensors cache)", entry.name)
        kwargs = dict(gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, quantization_config=GgufConfig(dequantize=True), dtype=torch.bfloat16, **kwargs
        )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "qf_source.json").write_text(
            json.dumps({"registry": entry.name, "gguf_sha256": entry.sha256, "gguf_size": entry.size})
        )
        os.replace(tmp, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        gguf.unlink(missing_ok=True)
    return cache


def model_source(name: str, progress: bool = True) -> str:
    """Registry name -> its cache dir; local dir -> itself; anything else is taken as a hub id."""
    if name in registry.REGISTRY:
        return str(registry_cache(registry.REGISTRY[name], progress=progress))
    converted = models_dir() / name  # a `qf convert --out NAME` result
    if "/" not in name and (converted / "config.json").exists():
        return str(converted)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if "/" not in name:
        known = ", ".join(registry.REGISTRY)
        raise ValueError(f"unknown model {name!r}: not a registry model ({known}), a converted model under "
                         f"{models_dir()}, a directory or a hub id")
    return name


def load_model(
    name: str | None = None, device: str = "auto", dtype: str = "auto", progress: bool = True
) -> LoadedModel:
    """Load the model and tokenizer, in eval mode. ``name`` defaults to ``$QF_MODEL`` then the registry default."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    name = name or os.environ.get("QF_MODEL") or registry.DEFAULT_MODEL
    start = time.perf_counter()
    source = model_source(name, progress=progress)
    dev = resolve_device(device)
    config = AutoConfig.from_pretrained(source)
    torch_dtype = resolve_dtype(dtype, getattr(config, "dtype", None) or getattr(config, "torch_dtype", None), dev)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype).to(dev)
    model.eval()
    install_from_config(model)  # a QFt-converted checkpoint gets its QF2 block back
    seconds = time.perf_counter() - start
    log.info("loaded %s (%s, %s) in %.1fs", name, dev, torch_dtype, seconds)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, path=source, seconds=seconds)
