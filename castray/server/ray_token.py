"""Where Ray keeps its authentication token on this machine (as Ray itself looks it up)."""

from __future__ import annotations

import os
from pathlib import Path


def local_ray_token() -> str | None:
    """``RAY_AUTH_TOKEN``, else the file at ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``."""
    direct = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if direct:
        return direct
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return token or None
