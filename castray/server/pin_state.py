"""A pinned copy's states and the pin's coverage: pure."""

from __future__ import annotations

from datetime import datetime

from castray.models import CopyStatus, PinCoverage, PinnedCopy


def copy_name(file: str) -> str:
    """What a pinned file is called on its nodes: its name; a folder's, without the ``/``."""
    return file.rstrip("/")


def moved(copy: PinnedCopy, status: CopyStatus, now: datetime, **changes: object) -> PinnedCopy:
    """``copy`` in ``status`` since ``now``; an error or a retry time only where they
    belong (a failure), a transfer id kept until another replaces it."""
    update: dict[str, object] = {"status": status, "since": now, "error": None, "retry_at": None}
    if status is CopyStatus.VERIFIED:
        update["tries"] = 0
    update.update(changes)
    return copy.model_copy(update=update)


def coverage_of(copies: dict[str, PinnedCopy]) -> PinCoverage:
    counts = {status: 0 for status in CopyStatus}
    for copy in copies.values():
        counts[copy.status] += 1
    return PinCoverage(
        nodes=len(copies),
        verified=counts[CopyStatus.VERIFIED],
        receiving=counts[CopyStatus.RECEIVING],
        pending=counts[CopyStatus.PENDING],
        failed=counts[CopyStatus.FAILED],
        waiting=counts[CopyStatus.WAITING],
    )
