"""Waiting on a condition with a deadline: the only way tests synchronise."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Call ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
        except AssertionError:
            raise
        except Exception as exc:  # probes may fail while things start; report the last one
            last_error = exc
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what}"
            ) from last_error
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free just now (the kernel's ephemeral range, outside Ray's 10002-19999)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
