"""The state of one transfer, moved only along its allowed transitions. Pure: no Ray, no I/O;
the transfer service feeds it what the agents report and publishes what it answers.

    transfer   queued ──> running ──> completed | partially_failed | failed | cancelled
                  └──────────────────> (any end)            interrupted (CastRay stopped)
    recipient  pending ──> running ──> completed | failed | cancelled | interrupted
                  └──────────────────> (any end)

An end is final: a report that arrives late (progress after a recipient finished, a second
finish) changes nothing. Snapshots handed out are immutable ``Transfer`` objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from castray.folders import FolderIndex
from castray.models import (
    FileInfo,
    RecipientCompletedEvent,
    RecipientFailedEvent,
    RecipientState,
    RecipientStatus,
    Transfer,
    TransferProgressEvent,
    TransferStatus,
    Transport,
)
from castray.protocol import RecipientFinished, TransferFinished, TransferProgress
from castray.server.transfer_plan import TransferPlan

_ENDS = frozenset(
    {
        TransferStatus.COMPLETED,
        TransferStatus.PARTIALLY_FAILED,
        TransferStatus.FAILED,
        TransferStatus.CANCELLED,
        TransferStatus.INTERRUPTED,
    }
)
TRANSFER_NEXT: dict[TransferStatus, frozenset[TransferStatus]] = {
    TransferStatus.QUEUED: _ENDS | {TransferStatus.RUNNING},
    TransferStatus.RUNNING: _ENDS,
    **{end: frozenset() for end in _ENDS},
}
_RECIPIENT_ENDS = frozenset(
    {
        RecipientStatus.COMPLETED,
        RecipientStatus.FAILED,
        RecipientStatus.CANCELLED,
        RecipientStatus.INTERRUPTED,
    }
)
RECIPIENT_NEXT: dict[RecipientStatus, frozenset[RecipientStatus]] = {
    RecipientStatus.PENDING: _RECIPIENT_ENDS | {RecipientStatus.RUNNING},
    RecipientStatus.RUNNING: _RECIPIENT_ENDS,
    **{end: frozenset() for end in _RECIPIENT_ENDS},
}


@dataclass
class TransferState:
    """One transfer in flight: its snapshot, and the parts (one per cluster) still running."""

    transfer: Transfer
    parts: int
    finished_parts: list[TransferFinished] = field(default_factory=list)
    folder: FolderIndex | None = None
    """Of a folder: where each file ends in its bundle, for progress in files."""

    @classmethod
    def start(cls, plan: TransferPlan, now: datetime) -> TransferState:
        transfer = Transfer(
            id=plan.transfer_id,
            status=TransferStatus.QUEUED,
            mode=plan.mode,
            source_node=plan.source.id,
            file=FileInfo(name=plan.file.name, size=plan.file.size or 0, blake3=plan.file.blake3),
            recipients={
                r.id: RecipientState(status=RecipientStatus.PENDING) for r in plan.recipients
            },
            bytes_total=plan.file.size or 0,
            created_at=now,
            started_at=now,
            transport=plan.transport,
            transport_note=plan.transport_note,
            placed_last=sorted(plan.placed_last),
            source_file=plan.file.library_name or plan.file.path,
            rate_limit=plan.rate_limit or None,
            origin=plan.file.origin,
            folder_files=plan.file.folder.files if plan.file.folder else None,
        )
        return cls(transfer, parts=len(plan.clusters), folder=plan.file.folder)

    @classmethod
    def resumed(cls, earlier: Transfer, plan: TransferPlan, now: datetime) -> TransferState:
        """A run that takes up an ended transfer: its completed recipients stay as they are,
        the others start again from what they kept."""
        recipients = dict(earlier.recipients)
        for node in plan.recipients:
            kept = recipients[node.id].bytes_done
            recipients[node.id] = RecipientState(status=RecipientStatus.PENDING, bytes_done=kept)
        transfer = earlier.model_copy(
            update={
                "status": TransferStatus.QUEUED,
                "recipients": recipients,
                "started_at": now,
                "finished_at": None,
                "throughput_bps": None,
                "error": None,
                "transport": plan.transport,
                "transport_note": plan.transport_note,
                "placed_last": sorted(plan.placed_last),
                "resumable": False,
                "resumes": earlier.resumes + 1,
                "source_bytes_sent": 0,
            }
        )
        return cls(transfer, parts=len(plan.clusters), folder=plan.file.folder)

    @property
    def finished(self) -> bool:
        return self.transfer.status in _ENDS

    # ---- what the agents report -------------------------------------------------------

    def sized(self, size: int) -> None:
        """The source opened the file: now its size is known."""
        if self.transfer.bytes_total != size:
            self._update(
                bytes_total=size, file=self.transfer.file.model_copy(update={"size": size})
            )

    def progress(self, message: TransferProgress) -> TransferProgressEvent | None:
        """Verified bytes per recipient; the first of them starts the transfer running."""
        if self.finished:
            return None
        self.sized(message.bytes_total)
        recipients = dict(self.transfer.recipients)
        for rid, done in message.bytes_done.items():
            state = recipients.get(rid)
            if state is None or state.status in _RECIPIENT_ENDS:
                continue
            moved = _moved(state.status, RecipientStatus.RUNNING, RECIPIENT_NEXT)
            recipients[rid] = state.model_copy(
                update={
                    "bytes_done": done,
                    "status": moved if done else state.status,
                    "files_done": self.folder.files_within(done) if self.folder else None,
                }
            )
        status = self.transfer.status
        if any(message.bytes_done.values()):
            status = _moved(status, TransferStatus.RUNNING, TRANSFER_NEXT)
        self._update(status=status, recipients=recipients)
        return TransferProgressEvent(
            transfer_id=self.transfer.id,
            bytes_total=self.transfer.bytes_total,
            bytes_done=message.bytes_done,
        )

    def recipient_finished(
        self, message: RecipientFinished, now: datetime
    ) -> RecipientCompletedEvent | RecipientFailedEvent | None:
        """A recipient ended (its copy verified and in place, or failed with a reason)."""
        previous = self.transfer.recipients.get(message.recipient)
        if previous is None or self.finished:
            return None
        wanted = RecipientStatus.COMPLETED if message.ok else RecipientStatus.FAILED
        if _moved(previous.status, wanted, RECIPIENT_NEXT) is not wanted:
            return None
        kept = message.kept_bytes or previous.kept_bytes
        if message.ok:
            state = RecipientState(
                status=wanted,
                bytes_done=self.transfer.bytes_total,
                path=message.path,
                files_done=self.transfer.folder_files,
                finished_at=now,
                throughput_bps=self._rate(self.transfer.bytes_total - kept, now),
                kept_bytes=kept,
            )
        else:
            state = RecipientState(
                status=wanted,
                bytes_done=previous.bytes_done,
                error=message.error,
                finished_at=now,
                throughput_bps=self._rate(previous.bytes_done - kept, now),
                kept_bytes=kept,
                transient=message.transient,
                refused=message.refused,
            )
        self._update(recipients={**self.transfer.recipients, message.recipient: state})
        kind = RecipientCompletedEvent if message.ok else RecipientFailedEvent
        return kind(
            transfer_id=self.transfer.id, recipient=message.recipient, recipient_state=state
        )

    def part_finished(self, message: TransferFinished) -> TransferFinished | None:
        """One cluster's part ended; when all have, the outcome to ``finish`` with."""
        self.finished_parts.append(message)
        if len(self.finished_parts) < self.parts:
            return None
        parts = self.finished_parts
        errors = [p.error for p in parts if p.error]
        return TransferFinished(
            transfer_id=message.transfer_id,
            size=max(p.size for p in parts),
            blake3=next((p.blake3 for p in parts if p.blake3), None),
            cancelled=any(p.cancelled for p in parts),
            error="; ".join(errors) or None,
            chunks_resent=sum(p.chunks_resent for p in parts),
            chunks_resumed=sum(p.chunks_resumed for p in parts),
            chunks_damaged=sum(p.chunks_damaged for p in parts),
            transient=all(p.transient for p in parts),
            bytes_served={k: v for p in parts for k, v in p.bytes_served.items()},
        )

    def _rate(self, moved: int, now: datetime) -> float | None:
        """Bytes per second over this run so far; None when nothing moved."""
        started = self.transfer.started_at or self.transfer.created_at
        seconds = max((now - started).total_seconds(), 1e-6)
        return round(moved / seconds, 1) if moved > 0 else None

    def finish(self, outcome: TransferFinished, now: datetime) -> Transfer:
        """The final state from the outcome of all parts; recipients still open end with it."""
        if self.finished:
            return self.transfer
        self.sized(outcome.size)
        if outcome.cancelled:
            recipients = _end_open(self.transfer.recipients, now, RecipientStatus.CANCELLED)
        else:
            recipients = _end_open(
                self.transfer.recipients,
                now,
                RecipientStatus.FAILED,
                error=outcome.error or "not finished",
                transient=outcome.transient,
            )
        ok = sum(1 for s in recipients.values() if s.status is RecipientStatus.COMPLETED)
        if outcome.cancelled:
            status = TransferStatus.CANCELLED
        elif ok == len(recipients):
            status = TransferStatus.COMPLETED
        elif ok:
            status = TransferStatus.PARTIALLY_FAILED
        else:
            status = TransferStatus.FAILED
        # What crossed the network in this run: not what recipients kept from an earlier one.
        delivered = sum(
            self.transfer.bytes_total - s.kept_bytes
            for s in recipients.values()
            if s.status is RecipientStatus.COMPLETED
            and s.finished_at is not None
            and s.finished_at >= (self.transfer.started_at or self.transfer.created_at)
        )
        unfinished = status in (TransferStatus.FAILED, TransferStatus.PARTIALLY_FAILED)
        self._update(
            status=_moved(self.transfer.status, status, TRANSFER_NEXT),
            recipients=recipients,
            finished_at=now,
            throughput_bps=self._rate(delivered, now),
            file=self.transfer.file.model_copy(update={"blake3": outcome.blake3}),
            chunks_resent=self.transfer.chunks_resent + outcome.chunks_resent,
            chunks_resumed=self.transfer.chunks_resumed + outcome.chunks_resumed,
            chunks_damaged=self.transfer.chunks_damaged + outcome.chunks_damaged,
            error=outcome.error or _summary(recipients),
            source_bytes_sent=outcome.bytes_served.get(self.transfer.source_node, 0),
            resumable=unfinished and self._resumable(recipients),
        )
        return self.transfer

    def _resumable(self, recipients: dict[str, RecipientState]) -> bool:
        """Whether a resume can run: a stream transfer (the object store keeps nothing) one
        of whose unfinished recipients did not refuse it before a byte."""
        return self.transfer.transport is Transport.STREAM and any(
            not s.refused for s in recipients.values() if s.status is not RecipientStatus.COMPLETED
        )

    def interrupt(self, reason: str, now: datetime) -> Transfer:
        """CastRay stopped while the transfer was in flight: each recipient not done ends
        ``interrupted`` with the reason (its stream sink keeps what it verified, for a
        resume)."""
        if not self.finished:
            self.transfer = interrupted(self.transfer, reason, now)
        return self.transfer

    def _update(self, **changes: object) -> None:
        self.transfer = self.transfer.model_copy(update=changes)


def interrupted(transfer: Transfer, reason: str, now: datetime) -> Transfer:
    """``transfer`` as CastRay's stop left it: each recipient not done ends ``interrupted``
    with the reason; resumable if on ``stream`` (its sinks journal what they verified)."""
    recipients = _end_open(
        transfer.recipients, now, RecipientStatus.INTERRUPTED, error=reason, transient=True
    )
    return transfer.model_copy(
        update={
            "status": TransferStatus.INTERRUPTED,
            "recipients": recipients,
            "finished_at": now,
            "error": reason,
            "resumable": transfer.transport is Transport.STREAM,
        }
    )


def _end_open(
    recipients: dict[str, RecipientState],
    now: datetime,
    status: RecipientStatus,
    **ending: object,
) -> dict[str, RecipientState]:
    """``recipients`` with each one not ended yet ended in ``status`` (plus ``ending``: its
    error, whether the cause passes); the ended ones as they were."""
    update = {"status": status, "finished_at": now, **ending}
    return {
        rid: state if state.status in _RECIPIENT_ENDS else state.model_copy(update=update)
        for rid, state in recipients.items()
    }


def _summary(recipients: dict[str, RecipientState]) -> str | None:
    """The recipients' failures in one line (the transfer's own ``error`` when it has none)."""
    failed = {rid: s.error for rid, s in recipients.items() if s.status is RecipientStatus.FAILED}
    if not failed:
        return None
    shown = "; ".join(f"{rid}: {error or 'failed'}" for rid, error in list(failed.items())[:3])
    more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
    return f"{len(failed)} of {len(recipients)} recipients failed: {shown}{more}"


S = TypeVar("S", TransferStatus, RecipientStatus)


def _moved(current: S, wanted: S, allowed: dict[S, frozenset[S]]) -> S:
    """``wanted`` if the move is allowed (or a no-op), else ``current``."""
    return wanted if wanted == current or wanted in allowed[current] else current
