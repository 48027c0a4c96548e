"""A small ``stream`` transfer carried inside Ray's calls: one call reads the file at the
source, one call per recipient checks, writes and commits it.

A chain of TCP streams costs a small file more than its bytes: a sink opened, a stream sent,
its status asked, its commit asked, the sending ended (six calls in a row, and a connection
per hop). 1,000 files of 64 KiB went at 78-98 files/s that way, two cores busy with Ray's
per-call work. A file Ray carries inside a call (under its 100 KiB inline limit, so never
through the object store) to a few recipients in this cluster goes in two calls instead.
What is checked does not change: the source must still be the file that was hashed, each
copy's BLAKE3 is checked before it is written, fsynced and renamed into place, and bytes
that fail their check are sent again (``chunk_retries`` times at most).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayError

from castray.agent.outcomes import CommitOutcome
from castray.agent.reasons import reason
from castray.agent.transports.stream_parts import Member, StreamSpec
from castray.protocol import (
    RecipientFinished,
    TransferFinished,
    TransferMessage,
    TransferProgress,
)

log = logging.getLogger(__name__)

INLINE_BYTES = 96 * 1024
"""Files this size or smaller may travel inline: Ray carries a call's arguments and answer
inside the call up to 100 KiB (``max_direct_call_object_size``), beyond through its object
store, which a ``stream`` transfer never uses."""

INLINE_RECIPIENTS = 8
"""Recipients an inline transfer reaches at most: each gets its own copy from the agent,
where a chain costs the source one copy whatever the fan-out."""


def fits(spec: StreamSpec) -> bool:
    """Whether a run can be carried inline: a small file, sent from this cluster to a few
    recipients all in it, whole (no resume, no origin fetch, no rate to keep to)."""
    return (
        spec.source is not None
        and spec.source_path is not None
        and spec.size <= INLINE_BYTES
        and 0 < len(spec.recipients) <= INLINE_RECIPIENTS
        and spec.downstream is None
        and not spec.resume
        and not spec.send_on
        and not spec.await_stream
        and spec.origin_fetch is None
        and spec.rate_limit == 0
    )


@dataclass
class _Asked:
    member: Member
    since: float
    """When it was first asked (Ray may not reach it for a moment: it is asked again)."""
    damaged: int = 0


class InlineRun:
    """Runs one inline transfer to its end on the calling thread."""

    def __init__(self, spec: StreamSpec, emit: Callable[[TransferMessage], None]) -> None:
        assert fits(spec), "an inline run needs a small file, its source and recipients here"
        self.spec = spec
        self._emit = emit
        self._cancelled = threading.Event()
        self._data = b""
        self._finished: set[str] = set()
        self._copied: set[str] = set()
        """Recipients whose copy is committed (each has all the bytes or none)."""
        self._resent = 0
        self._damaged = 0

    @property
    def size(self) -> int:
        return self.spec.size

    def cancel(self) -> None:
        self._cancelled.set()

    def open(self) -> None:
        """Read the whole file at the source; raises the source's error (its file is gone or
        changed, say)."""
        source, spec = self.spec.source, self.spec
        assert source is not None and spec.source_path is not None
        self._data = ray.get(
            source.handle.read_whole.remote(
                spec.transfer_id, spec.source_path, spec.source_identity, spec.expected_blake3
            ),
            timeout=spec.tunables.control_timeout,
        )

    def run(self) -> None:
        """Deliver to every recipient; always ends with one ``TransferFinished``."""
        error: str | None = None
        try:
            self._deliver()
        except Exception as exc:
            log.exception("transfer %s: the inline run failed", self.spec.transfer_id)
            error = f"the transfer failed: {reason(exc)}"
        finally:
            self._end(error)

    def _deliver(self) -> None:
        now = time.monotonic()
        waiting = {m.id: _Asked(m, now) for m in self.spec.recipients}
        while waiting and not self._cancelled.is_set():
            asked = {self._ask(a.member): a for a in waiting.values()}
            ready, late = ray.wait(
                list(asked), num_returns=len(asked), timeout=self.spec.tunables.control_timeout
            )
            for ref in late:
                self._finish(
                    waiting.pop(asked[ref].member.id).member,
                    error=f"it did not answer for {self.spec.tunables.control_timeout:g} s",
                    transient=True,
                )
            again = False
            for ref in ready:
                entry = asked[ref]
                if self._settle(entry, ref):
                    again = True
                else:
                    del waiting[entry.member.id]
            if again:  # a moment before asking those Ray could not reach
                self._cancelled.wait(self.spec.tunables.progress_interval / 4)

    def _ask(self, member: Member) -> Any:
        return member.handle.receive_whole.remote(
            self.spec.transfer_id, self.spec.file_name, self._data, self.spec.expected_blake3
        )

    def _settle(self, entry: _Asked, ref: Any) -> bool:
        """Act on one recipient's answer; whether it is to be asked again."""
        tunables = self.spec.tunables
        member = entry.member
        try:
            outcome: CommitOutcome = ray.get(ref)
        except ActorUnavailableError as exc:
            # Not a death: Ray could not reach it this once (a busy host), and the copy may
            # be in place. Asked again, it answers as it did the first time.
            if time.monotonic() - entry.since < tunables.peer_timeout:
                return True
            self._finish(
                member,
                error=f"Ray could not reach its actor for {tunables.peer_timeout:g} s to "
                f"commit its copy: its node died or is cut off ({reason(exc)})",
                transient=True,
            )
            return False
        except RayError as exc:
            self._finish(member, error=f"its actor or node died: {reason(exc)}", transient=True)
            return False
        if outcome.damaged:
            entry.damaged += 1
            self._damaged += 1
            if entry.damaged > tunables.chunk_retries:
                self._finish(member, error=f"the file failed its check {entry.damaged} times")
                return False
            self._resent += 1
            log.info("transfer %s: the copy to %s arrived damaged; sent again", *self._of(member))
            return True
        if not outcome.ok:
            self._finish(
                member, error=outcome.error or "the commit failed", refused=outcome.refused
            )
            return False
        self._copied.add(member.id)
        self._finish(member, path=outcome.path)
        return False

    def _of(self, member: Member) -> tuple[str, str]:
        return self.spec.transfer_id, member.id

    def _finish(
        self,
        member: Member,
        path: str | None = None,
        error: str | None = None,
        transient: bool = False,
        refused: bool = False,
    ) -> None:
        self._finished.add(member.id)
        if error is not None:
            log.warning("transfer %s: %s failed: %s", *self._of(member), error)
        self._emit(
            RecipientFinished(
                transfer_id=self.spec.transfer_id,
                recipient=member.id,
                ok=error is None,
                path=path,
                error=error,
                transient=transient,
                refused=refused,
            )
        )

    def _end(self, error: str | None) -> None:
        spec = self.spec
        cancelled = self._cancelled.is_set()
        if error is not None and not cancelled:
            for member in spec.recipients:
                if member.id not in self._finished:
                    self._finish(member, error=error, transient=True)
        done = {m.id: spec.size if m.id in self._copied else 0 for m in spec.recipients}
        self._emit(
            TransferProgress(transfer_id=spec.transfer_id, bytes_total=spec.size, bytes_done=done)
        )
        assert spec.source is not None
        # The source read the file once; the agent passed it on to each.
        served = {spec.source.id: spec.size} if self._copied else {}
        self._emit(
            TransferFinished(
                transfer_id=spec.transfer_id,
                size=spec.size,
                blake3=spec.expected_blake3,
                cancelled=cancelled,
                error=error,
                bytes_served=served,
                chunks_resent=self._resent,
                chunks_damaged=self._damaged,
            )
        )
