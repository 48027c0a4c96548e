"""The server's logs: one format, and no secret in them.

The web page and scripts may put the API token in a ``/ws?token=...`` URL, and uvicorn logs
every WebSocket connection with its URL at INFO; at debug level it traces the frames, the
page's ``{"type": "auth", "token": ...}`` among them. A filter on the root handlers masks
every token value (and bearer credentials) before a line is written, whoever logged it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import Literal

LogFormat = Literal["text", "json"]
ID_FIELDS = ("transfer_id", "cluster", "endpoint")
"""Fields a log call may give in ``extra`` (see ``about``); JSON lines carry them as fields."""

_SECRETS = re.compile(
    r"""((?:ray_)?token\\?["']?\s*[:=]\s*\\?["']?)[^"'\\&\s,}]+|(Bearer\s+)[^\s"']+""",
    re.IGNORECASE,
)
"""A token's value wherever a line shows one: ``token=...`` in a URL or an environment, a
``"token": "..."`` in a JSON message (the page's first /ws message, as a debug trace of
WebSocket frames shows it, escaped or not), or a bearer credential."""


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


class PeerMistakes(logging.Filter):
    """A client's protocol mistake is the client's, not an error of the server: uvicorn logs
    an invalid UTF-8 WebSocket frame with a traceback each time (a flood of them would fill the
    log); it becomes one warning line."""

    _MISTAKES = ("Invalid UTF-8 sequence received from client",)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.getMessage().startswith(self._MISTAKES):
            record.exc_info = record.exc_text = None
            record.msg, record.args = f"{record.getMessage()}: closed it (1007)", None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def about(
    transfer_id: str | None = None, cluster: str | None = None, endpoint: str | None = None
) -> dict[str, str]:
    """``extra`` for a log call about a transfer, a cluster or an endpoint: in JSON lines
    they become fields a log shipper can filter on."""
    given = {"transfer_id": transfer_id, "cluster": cluster, "endpoint": endpoint}
    return {k: v for k, v in given.items() if v is not None}


class JsonLines(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the ids the
    call gave, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ID_FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Log to stderr at ``level``, as text or JSON lines; every line goes through
    ``RedactSecrets``."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.addFilter(PeerMistakes())
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One line per dashboard probe is noise at info level.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
