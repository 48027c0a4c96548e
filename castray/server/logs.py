"""The server's logs: one format, and no secret in them.

The web page and scripts may put the API token in a ``/ws?token=...`` URL, and uvicorn logs
every WebSocket connection with its URL at INFO; a filter on the root handlers masks any
``token=`` value (and bearer credentials) before a line is written, whoever logged it.
"""

from __future__ import annotations

import logging
import re
import sys

_SECRETS = re.compile(r"((?:token|ray_token)=)[^&\s\"']+|(Bearer\s+)[^\s\"']+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with token values replaced by ``***``."""
    return _SECRETS.sub(lambda m: (m.group(1) or m.group(2)) + "***", text)


class RedactSecrets(logging.Filter):
    """Masks tokens in a record's final message (its arguments are folded in first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``; every line goes through ``RedactSecrets``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One line per dashboard probe is noise at info level.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
