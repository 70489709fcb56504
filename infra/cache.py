"""The project's download/build cache: the Kafka jars, the Toxiproxy binary, the schemas."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """The project's download/build cache (Kafka jars, the Toxiproxy binary).

    ``$DNC_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/dnc``, else ``~/.cache/dnc``
    (infra/setup.sh uses the same rule).
    """
    explicit = os.environ.get("DNC_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dnc"
