"""Benchmark result files: JSON, gzip-compressed where the name ends in ``.gz``.

A 1,000-edit ``qf bench edits`` result keeps every case's scores and greedy answers (1-3 MB of
JSON); compressed it is a tenth of that, which keeps docs/results small enough to travel with the
working tree. Scripts that read results accept either form.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def write_result(path: str | Path, text: str) -> None:
    """Write the JSON ``text`` (and a final newline) to ``path``, gzip-compressed where it ends in .gz."""
    data = (text + "\n").encode("utf-8")
    Path(path).write_bytes(gzip.compress(data, mtime=0) if str(path).endswith(".gz") else data)


def read_result(path: str | Path) -> dict:
    """The JSON object in ``path``, plain or gzip-compressed (.gz)."""
    data = Path(path).read_bytes()
    return json.loads(gzip.decompress(data) if str(path).endswith(".gz") else data)


def result_name(path: str | Path) -> str:
    """The file's name without .json or .json.gz, to label a row of a table."""
    return Path(path).name.removesuffix(".gz").removesuffix(".json")
