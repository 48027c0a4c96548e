"""Byte counts and rates: read from what users type ("55.5MB", "50MB/s"), and put in words
for messages, in binary units."""

from __future__ import annotations

import re

from rich.filesize import pick_unit_and_suffix

from castray.errors import InvalidRequest

UNITS = {
    "": 1,
    "B": 1,
    "KB": 1024,
    "KIB": 1024,
    "MB": 1024**2,
    "MIB": 1024**2,
    "GB": 1024**3,
    "GIB": 1024**3,
    "TB": 1024**4,
    "TIB": 1024**4,
}
_SIZE = re.compile(r"\s*(\d{1,20}(?:\.\d{1,9})?)\s*([A-Za-z]{0,3})\s*")
_PER_SECOND = re.compile(r"\s*(.*?)\s*(?:/\s*s|ps)?\s*", re.IGNORECASE)


def binary_size(count: int) -> str:
    unit, suffix = pick_unit_and_suffix(count, ["B", "KiB", "MiB", "GiB", "TiB"], 1024)
    return f"{count / unit:.1f} {suffix}"


def parse_size(size: str | int) -> int:
    """Bytes from ``1048576``, ``"10KB"``, ``"55.5MB"``, ``"1GiB"`` (units are powers of 1024)."""
    if isinstance(size, int):
        value = size
    else:
        match = _SIZE.fullmatch(size)
        unit = match[2].upper() if match else ""
        if match is None or unit not in UNITS:
            raise InvalidRequest(
                f"cannot read size {size!r}: use bytes or a number with B, KB, MB, GB or TB"
            )
        value = int(float(match[1]) * UNITS[unit])
    if value < 0:
        raise InvalidRequest("size must not be negative")
    return value


def parse_rate(rate: str | int) -> int:
    """Bytes per second from ``1048576``, ``"50MB/s"``, ``"10MiB/s"`` or ``"10MB"`` (units are
    powers of 1024); 0 means no limit."""
    if isinstance(rate, int):
        return parse_size(rate)
    match = _PER_SECOND.fullmatch(rate)
    try:
        return parse_size(match[1] if match else rate)
    except InvalidRequest:
        raise InvalidRequest(
            f"cannot read rate {rate!r}: use bytes per second, or a number with B, KB, MB or GB "
            'and "/s", as in "50MB/s"'
        ) from None


MIN_RATE_LIMIT = 64 * 1024
"""The slowest rate a limit may set (bytes per second): slower, one 8 MiB chunk takes over two
minutes, a stream holds its sender for hours, and a stall cannot be told from a limit."""


def parse_rate_limit(rate: str | int) -> int:
    """A rate limit: as ``parse_rate``, 0 for none, else at least ``MIN_RATE_LIMIT``."""
    value = parse_rate(rate)
    if 0 < value < MIN_RATE_LIMIT:
        raise InvalidRequest(
            f'rate limit {rate!r} is below the slowest allowed, 64 KiB/s ("64KB/s"): '
            "a slower one would hold a sender for hours; use at least that, or no limit"
        )
    return value


def rate_in_words(bytes_per_second: int) -> str:
    return f"{binary_size(bytes_per_second)}/s"


_DURATION = re.compile(r"\s*(\d{1,12}(?:\.\d{1,9})?)\s*([smhdw]?)\s*", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(duration: str | float) -> float:
    """Seconds from ``3600``, ``"90s"``, ``"30m"``, ``"12h"``, ``"7d"`` or ``"2w"``."""
    if isinstance(duration, int | float):
        return float(duration)
    match = _DURATION.fullmatch(duration)
    if match is None:
        raise InvalidRequest(
            f"cannot read duration {duration!r}: use seconds, or a number with s, m, h, d or w "
            '(as in "7d")'
        )
    return float(match[1]) * _SECONDS[match[2].lower()]
