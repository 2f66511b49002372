"""Where dfbench keeps what it builds (mini sets, converted datasets, the default feature cache)."""

from __future__ import annotations

import os
from pathlib import Path


def dfbench_home(home: str | Path | None = None) -> Path:
    """``home`` if given, else ``$DFBENCH_HOME``, else ``~/.cache/dfbench``."""
    return Path(home or os.environ.get("DFBENCH_HOME") or Path.home() / ".cache" / "dfbench")
