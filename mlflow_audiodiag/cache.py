"""Where the package keeps generated data, feature caches and spools on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_root() -> Path:
    """``$AUDIODIAG_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlflow-audiodiag``, else ``~/.cache/``."""
    explicit = os.environ.get("AUDIODIAG_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mlflow-audiodiag"
