"""Where qf keeps its files: ``$QF_HOME``, else the platform's user data directory."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """The data directory (created on first use).

    ``QF_HOME`` wins; otherwise platformdirs' user data dir for ``qf``
    (``~/.local/share/qf`` on Linux).
    """
    home = os.environ.get("QF_HOME")
    if home:
        path = Path(home).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir("qf", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    path = data_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
