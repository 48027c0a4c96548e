"""Byte counts in words, in binary units (as the generator reads "10MiB"), for messages."""

from __future__ import annotations

from rich.filesize import pick_unit_and_suffix


def binary_size(count: int) -> str:
    unit, suffix = pick_unit_and_suffix(count, ["B", "KiB", "MiB", "GiB", "TiB"], 1024)
    return f"{count / unit:.1f} {suffix}"
