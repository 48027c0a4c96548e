"""One agent's part of a ``stream`` transfer, driven from the agent: Ray carries the control
calls, the file's bytes go endpoint to endpoint over TCP.

The recipients of this cluster form a chain: each sink passes on what arrives to the next
one (cut-through), the last to the first recipient of the next cluster, if any. The source,
when it is in this cluster, streams the file once, with ``sendfile``, to the head of the
chain: its egress is one copy of the file whatever the fan-out.

A few times a second the run reads every sink's status: it reports the verified bytes,
commits a recipient whose every chunk is verified (fsync, whole-file BLAKE3, rename), and
repairs. A sink whose streams ended with chunks missing (a chunk that failed its check, or a
stream that broke because a receiver upstream died) gets those chunks again, from the source
or from a recipient upstream that has them: consecutive sinks that need repair are re-linked
into one chain around the dead, so a repair too costs its supplier one copy. A recipient that
dies or cannot write is failed with its reason; the others go on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError

from castray.agent.outcomes import CommitOutcome
from castray.agent.reasons import reason
from castray.agent.streams import SinkStatus, all_chunks
from castray.chunks import plan_chunks
from castray.protocol import (
    AgentTunables,
    RecipientFinished,
    TransferFinished,
    TransferMessage,
    TransferProgress,
)

log = logging.getLogger(__name__)

SOURCE_PROBE_TIMEOUT = 2.0
"""Seconds the source gets to answer once the stream it sent failed in its actor: a live one
answers its control group at once, and the transfer waits on nothing else."""


@dataclass(frozen=True)
class Member:
    """A recipient as the run knows it: id, actor, data address."""

    id: str
    handle: Any
    data_address: str


@dataclass(frozen=True)
class StreamSpec:
    transfer_id: str
    file_name: str
    size: int
    chunk_size: int
    manifest: list[bytes]
    expected_blake3: str
    secret: bytes
    recipients: list[Member]
    source: Member | None
    """The source endpoint, when it is in this cluster."""
    source_path: str | None
    downstream: str | None
    """Where the last recipient passes the stream on: the next cluster's first recipient."""
    tunables: AgentTunables
    resume: bool = False
    """Take up what an earlier run left: each sink gets only the chunks its journal lacks."""
    rate_limit: int = 0
    """Bytes per second each stream is sent at, at most; 0: no limit."""


@dataclass
class _Recipient:
    member: Member
    status: SinkStatus | None = None
    failed: str | None = None
    committing: Any = None
    asking: Any = None
    """Its status call in flight (one at a time), and since when."""
    asked_at: float = 0.0
    path: str | None = None
    streams_before_repair: int | None = None
    """While a repair is on its way: how many streams the sink had seen when it was sent."""
    attempts: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def needs_repair(self) -> bool:
        """Its streams ended with chunks missing, and no repair is on its way."""
        status = self.status
        if not self.open or self.committing is not None or status is None:
            return False
        if self.streams_before_repair is not None:
            if status.streams_seen <= self.streams_before_repair:
                return False
            self.streams_before_repair = None
        return (status.ended or status.broken is not None) and bool(status.missing)

    @property
    def open(self) -> bool:
        """Still to end (not failed, not committed)."""
        return self.failed is None and self.path is None


class StreamRun:
    """Runs one agent's part of a stream transfer to its end on the calling thread."""

    def __init__(
        self,
        spec: StreamSpec,
        emit: Callable[[TransferMessage], None],
        death: Callable[[str], str | None] = lambda _: None,
    ) -> None:
        self.spec = spec
        self._emit = emit
        self._death = death
        """Why an endpoint is dead, as its cluster's agent saw it (None while alive)."""
        self._source_asked_at = 0.0
        self._recipients = [_Recipient(m) for m in spec.recipients]
        self._cancelled = threading.Event()
        self._sends: dict[Any, str] = {}
        """Streams being sent: their Ray refs, and who sends them."""
        self._served: dict[str, int] = defaultdict(int)
        self._resent = 0
        self._error: str | None = None

    @property
    def size(self) -> int:
        return self.spec.size

    def cancel(self) -> None:
        self._cancelled.set()

    def open(self) -> None:
        """Hold the source file open for the whole run (a file replaced under its name is
        never read), then open every recipient's sink, each linked to the next (the run
        starts after). Raises the source's error (its file is gone, say)."""
        tid = self.spec.transfer_id
        source = self.spec.source
        if source is not None and self.spec.source_path is not None:
            ray.get(
                source.handle.hold_source.remote(tid, self.spec.source_path),
                timeout=self.spec.tunables.control_timeout,
            )
        refs = {}
        for position, recipient in enumerate(self._recipients):
            refs[recipient.member.id] = recipient.member.handle.open_stream_sink.remote(
                tid,
                self.spec.file_name,
                self.spec.size,
                self.spec.chunk_size,
                self.spec.manifest,
                self.spec.secret,
                self._next_address(position),
                self.spec.expected_blake3,
                self.spec.resume,
            )
        for recipient in self._recipients:
            try:
                ray.get(refs[recipient.member.id], timeout=self.spec.tunables.control_timeout)
            except (RayError, GetTimeoutError) as exc:
                self._fail(recipient, f"could not create the file: {reason(exc)}")
        self._relink_around_failed()

    def run(self) -> None:
        """Stream, watch, repair, commit; always ends with one ``TransferFinished``."""
        try:
            # The head of this cluster's chain, or, with no recipient here, the next cluster's.
            members = self._open_members()
            head = members[0].member.data_address if members else self.spec.downstream
            # A resumed run sends nothing whole: its sinks start "ended", with what they lack
            # missing, and the repairs send just that.
            if self.spec.source is not None and head is not None and not self.spec.resume:
                self._send(
                    self.spec.source,
                    self.spec.source_path,
                    head,
                    all_chunks(self.spec.size, self.spec.chunk_size),
                    forward=True,
                )
            self._watch()
        except Exception as exc:
            log.exception("transfer %s: the stream run failed", self.spec.transfer_id)
            self._error = f"the transfer failed: {reason(exc)}"
        finally:
            self._end()

    # ---- the watch loop ----------------------------------------------------------------------

    def _watch(self) -> None:
        tunables = self.spec.tunables
        progress_at = time.monotonic()
        last_bytes = -1
        while not self._cancelled.is_set():
            self._collect_sends()
            self._check_deaths()
            if self._error is not None:
                return
            self._read_statuses()
            self._collect_commits()
            for recipient in self._recipients:
                self._act_on(recipient)
            self._repair()
            self._report_progress()
            if not any(r.open for r in self._recipients) and not self._sends:
                return
            # Bytes arriving, not only whole chunks: a slow stream (one of many sharing a
            # link) can take long over a chunk without being stalled.
            moved = sum(r.status.received_bytes for r in self._recipients if r.status)
            if moved != last_bytes:
                last_bytes, progress_at = moved, time.monotonic()
            elif time.monotonic() - progress_at > tunables.stall_timeout:
                for recipient in self._recipients:
                    if recipient.open and recipient.committing is None:
                        self._fail(recipient, f"no byte arrived for {tunables.stall_timeout:g} s")
            self._pause()

    def _pause(self) -> None:
        """Until the next look: a commit that ends, or the sinks' own wait for a change (the
        status calls wait up to a progress interval for a sink to settle)."""
        interval = self.spec.tunables.progress_interval
        commits = [r.committing for r in self._recipients if r.committing is not None]
        if commits:
            ray.wait(commits, num_returns=1, timeout=interval)
        elif not any(self._unsettled(r) for r in self._recipients):
            self._cancelled.wait(interval)

    @staticmethod
    def _unsettled(recipient: _Recipient) -> bool:
        """An open sink still receiving: its next status call waits for it to settle."""
        status = recipient.status
        return (
            recipient.open
            and status is not None
            and not status.ended
            and status.broken is None
            and not recipient.needs_repair
        )

    def _read_statuses(self) -> None:
        """Ask every open sink how it is doing, one question each at a time: a sink that does
        not answer (its host cut off, its node lost) holds up nobody, and once it has been
        silent for ``peer_timeout`` it is failed and the stream goes around it."""
        tunables = self.spec.tunables
        now = time.monotonic()
        for recipient in self._recipients:
            if recipient.open and recipient.asking is None:
                wait = tunables.progress_interval if self._unsettled(recipient) else 0.0
                recipient.asking = recipient.member.handle.sink_status.remote(
                    self.spec.transfer_id, wait
                )
                recipient.asked_at = now
        asking = {r.asking: r for r in self._recipients if r.asking is not None}
        if not asking:
            return
        ready, _ = ray.wait(
            list(asking), num_returns=len(asking), timeout=tunables.progress_interval * 2
        )
        for ref in ready:
            recipient = asking.pop(ref)
            recipient.asking = None
            try:
                status = ray.get(ref)
            except RayError as exc:
                if recipient.open:
                    self._fail(recipient, f"its actor or node died: {reason(exc)}")
                continue
            if status is not None and recipient.open:
                recipient.status = status
        now = time.monotonic()
        for recipient in asking.values():
            if recipient.open and now - recipient.asked_at > tunables.peer_timeout:
                self._cut_off(
                    recipient,
                    f"it did not answer for {tunables.peer_timeout:g} s: its host is cut off "
                    "or its node is lost",
                )

    def _check_deaths(self) -> None:
        """The source dead ends the transfer with that reason (its recipients are not to
        blame); a dead recipient is taken out of the chain at once.

        Ray takes seconds to call a crashed node's actors dead; a stream that broke is heard
        of at once. So when one broke, the source is asked whether it still answers."""
        source = self.spec.source
        if source is not None and (why := self._death(source.id)) is not None:
            self._error = f"the source {source.id} died: {why}"
            return
        now = time.monotonic()
        broke = any(r.open and r.status and r.status.broken for r in self._recipients)
        if source is not None and broke and now - self._source_asked_at > SOURCE_PROBE_TIMEOUT:
            self._source_asked_at = now
            if not _answers(source.handle, SOURCE_PROBE_TIMEOUT):
                self._error = (
                    f"the source {source.id} died: it stopped answering when its stream broke"
                )
                return
        for recipient in self._recipients:
            if recipient.open and (why := self._death(recipient.member.id)) is not None:
                self._cut_off(recipient, f"its endpoint died: {why}")

    def _cut_off(self, recipient: _Recipient, why: str) -> None:
        """Fail a recipient that stopped answering or died, and take it out of the chain: its
        upstream stops passing the stream to it (it would block there), its downstream drops
        the stream from it (it would wait there); what the downstream lacks is then repaired."""
        position = self._recipients.index(recipient)
        self._fail(recipient, why)
        tid = self.spec.transfer_id
        before = [r for r in self._recipients[:position] if r.failed is None]
        if before:
            before[-1].member.handle.sever.remote(tid, False, True)
        elif self.spec.source is not None:
            self.spec.source.handle.stop_sending.remote(tid)
        after = [r for r in self._recipients[position + 1 :] if r.open]
        if after:
            after[0].member.handle.sever.remote(tid, True, False)
        self._relink_around_failed()

    def _act_on(self, recipient: _Recipient) -> None:
        status = recipient.status
        if status is None or recipient.path is not None:
            return
        if status.error is not None and recipient.failed is None:
            # Its own copy failed; it still passes the stream on until the stream ends.
            self._fail(recipient, status.error, abort=False)
            return
        settled = status.ended or status.broken is not None
        if recipient.open and settled and not status.missing and recipient.committing is None:
            recipient.committing = recipient.member.handle.commit_sink.remote(
                self.spec.transfer_id, self.spec.expected_blake3
            )

    def _collect_commits(self) -> None:
        for recipient in self._recipients:
            if recipient.committing is None:
                continue
            ready, _ = ray.wait([recipient.committing], timeout=0)
            if not ready:
                continue
            ref, recipient.committing = recipient.committing, None
            try:
                outcome: CommitOutcome = ray.get(ref)
            except RayError as exc:
                self._fail(recipient, f"could not commit the file: {reason(exc)}")
                continue
            if not outcome.ok:
                self._fail(recipient, outcome.error or "the commit failed")
                continue
            recipient.path = outcome.path
            self._emit(
                RecipientFinished(
                    transfer_id=self.spec.transfer_id,
                    recipient=recipient.member.id,
                    ok=True,
                    path=outcome.path,
                )
            )

    # ---- sending and repairing --------------------------------------------------------------

    def _send(
        self,
        supplier: Member,
        path: str | None,
        target: str,
        chunks: list[tuple[int, int, int]],
        forward: bool,
    ) -> None:
        ref = supplier.handle.send_stream.remote(
            self.spec.transfer_id,
            path,
            target,
            self.spec.secret,
            chunks,
            forward,
            self.spec.rate_limit,
        )
        self._sends[ref] = supplier.id

    def _collect_sends(self) -> None:
        if not self._sends:
            return
        ready, _ = ray.wait(list(self._sends), num_returns=len(self._sends), timeout=0)
        for ref in ready:
            supplier = self._sends.pop(ref)
            try:
                self._served[supplier] += int(ray.get(ref))
            except RayError as exc:
                source = self.spec.source
                if (
                    source is not None
                    and supplier == source.id
                    and not _answers(source.handle, SOURCE_PROBE_TIMEOUT)
                ):
                    self._error = f"the source {supplier} died: {reason(exc)}"
                    return
                log.info(
                    "transfer %s: a stream from %s ended early: %s",
                    self.spec.transfer_id,
                    supplier,
                    reason(exc),
                )

    def _repair(self) -> None:
        """Runs of consecutive open recipients whose streams ended with chunks missing get one
        repair stream each, re-linked around whoever is in between."""
        for run in self._runs_to_repair():
            missing = sorted({i for r in run for i in r.status.missing})  # type: ignore[union-attr]
            for recipient in run:
                for index in recipient.status.missing:  # type: ignore[union-attr]
                    recipient.attempts[index] += 1
            spent = [
                r
                for r in run
                if any(n > self.spec.tunables.chunk_retries for n in r.attempts.values())
            ]
            for recipient in spent:
                worst = max(recipient.attempts, key=recipient.attempts.__getitem__)
                self._fail(
                    recipient,
                    f"chunk {worst} still missing after {self.spec.tunables.chunk_retries} retries",
                )
            run = [r for r in run if r.open]
            if not run:
                continue
            supplier, path = self._supplier_for(run[0], missing)
            if supplier is None:
                for recipient in run:
                    self._fail(
                        recipient, "chunks are missing that no one in this cluster has left to send"
                    )
                continue
            for position, recipient in enumerate(run):
                nxt = run[position + 1].member.data_address if position + 1 < len(run) else None
                ray.get(
                    recipient.member.handle.relink.remote(self.spec.transfer_id, nxt),
                    timeout=self.spec.tunables.control_timeout,
                )
                recipient.streams_before_repair = recipient.status.streams_seen  # type: ignore[union-attr]
            chunks = [
                c for c in _chunks(self.spec.size, self.spec.chunk_size) if c[0] in set(missing)
            ]
            self._resent += len(chunks)
            log.info(
                "transfer %s: sending %d chunk(s) again from %s to %s",
                self.spec.transfer_id,
                len(chunks),
                supplier.id,
                ", ".join(r.member.id for r in run),
            )
            self._send(supplier, path, run[0].member.data_address, chunks, forward=True)

    def _runs_to_repair(self) -> list[list[_Recipient]]:
        """Consecutive recipients that need repair; a failed one between them is skipped over
        (re-linked around), one that is fine or committed ends a run."""
        runs: list[list[_Recipient]] = []
        current: list[_Recipient] = []
        for recipient in self._recipients:
            if recipient.needs_repair:
                current.append(recipient)
            elif recipient.failed is None and current:
                runs.append(current)
                current = []
        if current:
            runs.append(current)
        return runs

    def _supplier_for(
        self, head: _Recipient, chunks: list[int]
    ) -> tuple[Member | None, str | None]:
        """The source, else the nearest recipient upstream of ``head`` that has ``chunks``."""
        if self.spec.source is not None:
            return self.spec.source, self.spec.source_path
        position = self._recipients.index(head)
        for upstream in reversed(self._recipients[:position]):
            if upstream.path is not None:
                return upstream.member, upstream.path
            status = upstream.status
            if (
                status is not None
                and upstream.failed is None
                and not set(chunks) & set(status.missing)
            ):
                return upstream.member, None
        return None, None

    # ---- bookkeeping -------------------------------------------------------------------

    def _next_address(self, position: int) -> str | None:
        later = [r for r in self._recipients[position + 1 :] if r.failed is None]
        return later[0].member.data_address if later else self.spec.downstream

    def _relink_around_failed(self) -> None:
        for position, recipient in enumerate(self._recipients):
            if recipient.failed is None:
                recipient.member.handle.relink.remote(
                    self.spec.transfer_id, self._next_address(position)
                )

    def _open_members(self) -> list[_Recipient]:
        return [r for r in self._recipients if r.failed is None]

    def _fail(self, recipient: _Recipient, why: str, abort: bool = True) -> None:
        if recipient.failed is not None or recipient.path is not None:
            return
        recipient.failed = why
        log.warning("transfer %s: %s failed: %s", self.spec.transfer_id, recipient.member.id, why)
        if abort:  # its verified chunks stay, journaled: a resume need not send them again
            recipient.member.handle.abort_sink.remote(self.spec.transfer_id, True)
        self._emit(
            RecipientFinished(
                transfer_id=self.spec.transfer_id,
                recipient=recipient.member.id,
                ok=False,
                error=why,
            )
        )

    def _report_progress(self) -> None:
        self._emit(
            TransferProgress(
                transfer_id=self.spec.transfer_id,
                bytes_total=self.spec.size,
                bytes_done={
                    r.member.id: (
                        self.spec.size if r.path else r.status.verified_bytes if r.status else 0
                    )
                    for r in self._recipients
                },
            )
        )

    def _end(self) -> None:
        tid = self.spec.transfer_id
        cancelled = self._cancelled.is_set()
        suppliers = [r.member for r in self._recipients]
        if self.spec.source is not None:
            suppliers.append(self.spec.source)
        for supplier in suppliers:
            supplier.handle.stop_sending.remote(tid)
        if self.spec.source is not None:
            self.spec.source.handle.release_source.remote(tid)
        for recipient in self._recipients:
            if recipient.path is None:
                recipient.member.handle.abort_sink.remote(tid, not cancelled)
                if not cancelled:
                    self._fail(
                        recipient,
                        self._error or "the transfer ended before this copy was whole",
                        abort=False,
                    )
            if recipient.status is not None:
                self._served[recipient.member.id] += recipient.status.forwarded_bytes
        self._report_progress()
        self._emit(
            TransferFinished(
                transfer_id=tid,
                size=self.spec.size,
                blake3=self.spec.expected_blake3,
                cancelled=cancelled,
                error=self._error,
                bytes_served=dict(self._served),
                chunks_resent=self._resent,
            )
        )


def _chunks(size: int, chunk_size: int) -> list[tuple[int, int, int]]:
    return [(c.index, c.offset, c.length) for c in plan_chunks(size, chunk_size)]


def _answers(handle: Any, timeout: float) -> bool:
    """Whether an actor still answers (tells its own death from a broken stream)."""
    try:
        ray.get(handle.describe.remote(), timeout=timeout)
    except (RayError, GetTimeoutError):
        return False
    return True
