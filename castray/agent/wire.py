"""The agent's end of the protocol: JSON lines out on a private copy of stdout."""

from __future__ import annotations

import os
import sys
import threading
from typing import TextIO

from castray.protocol import AgentMessage


class Wire:
    """Writes protocol lines; thread-safe; notices when the server has gone away."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self.broken = threading.Event()

    @classmethod
    def take_stdout(cls) -> Wire:
        """Keep fd 1 for the protocol and send everything else printed there to stderr.

        Ray and libraries it loads print to stdout; a stray line must never be taken for a
        protocol message.
        """
        protocol_fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return cls(os.fdopen(protocol_fd, "w", encoding="utf-8"))

    def send(self, message: AgentMessage) -> None:
        line = message.model_dump_json() + "\n"
        with self._lock:
            try:
                self._out.write(line)
                self._out.flush()
            except (BrokenPipeError, OSError, ValueError):
                self.broken.set()
