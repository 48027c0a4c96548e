"""One transfer, driven from the agent: chunks stream from the source along a chain.

The agent never touches file bytes; it only moves Ray object references. For each chunk the
source reads it into the object store on its node; the first recipient pulls it from there,
verifies and writes it, and returns it again as a new object on its own node, which the next
recipient pulls, and so on. So the source sends each byte once whatever the number of
recipients (a chain: multicast and broadcast cost the source what unicast does), and at most
``window`` chunks per link are in flight, which bounds memory and object-store use.

A chunk that arrives corrupted, or that a recipient could not get because its upstream
failed, is read again from the source and sent to that recipient directly, a few times at
most. A recipient that dies or cannot write is failed with a reason; the others go on.

Recipients in other clusters are reached through their clusters' agents (``feeds.py``): the
source cluster's run exports each chunk once to each of them, and each of them runs its own
``TransferRun`` fed by that stream.
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
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayError

from castray import ratelimit
from castray.agent.outcomes import ChunkOutcome, ChunkStatus, CommitOutcome
from castray.agent.reasons import cause_of, reason
from castray.agent.transports.feeds import EndpointFeed, Exporter, StreamBroken, StreamFeed
from castray.chunks import Chunk, plan_chunks
from castray.errors import CastRayError, SourceChanged
from castray.protocol import (
    AgentTunables,
    RecipientFinished,
    TransferFinished,
    TransferMessage,
    TransferProgress,
)

log = logging.getLogger(__name__)

LOST_RETRIES_FACTOR = 4
"""A chunk lost on the way (not damaged) is sent again this many times ``chunk_retries``."""


@dataclass
class _Recipient:
    id: str
    handle: Any
    bytes_done: int = 0
    failed: str | None = None
    path: str | None = None
    attempts: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    """Chunks lost on the way to it (an upstream failed), by index: sent again."""
    damaged: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    """Chunks that arrived damaged, by index: sent again, ``chunk_retries`` times at most."""


@dataclass
class _InFlight:
    chunk: Chunk
    recipient: _Recipient
    supplier: str


@dataclass(frozen=True)
class RunSpec:
    """What one agent's part of a transfer needs to know."""

    transfer_id: str
    file_name: str
    expected_blake3: str | None
    chunk_size: int
    window: int
    tunables: AgentTunables
    rate_limit: int = 0
    """Bytes per second the chunks are sent at, at most; 0: no limit."""


class TransferRun:
    """Runs one agent's part of a transfer to its end on the calling thread."""

    def __init__(
        self,
        spec: RunSpec,
        feed: EndpointFeed | StreamFeed,
        recipients: list[tuple[str, Any]],
        emit: Callable[[TransferMessage], None],
        exporters: list[Exporter] | None = None,
        size: int = 0,
    ) -> None:
        self.spec = spec
        self._feed = feed
        self._recipients = [_Recipient(rid, handle) for rid, handle in recipients]
        self._exporters = list(exporters or [])
        self._emit = emit
        self._cancelled = threading.Event()
        self._inflight: dict[Any, _InFlight] = {}
        self._outstanding: dict[int, int] = defaultdict(int)
        self._served: dict[str, int] = defaultdict(int)
        self._size = size
        self._resent = 0
        self._damaged = 0
        self._error_passes = True
        self._limit = ratelimit.bucket_for(spec.rate_limit)

    @property
    def size(self) -> int:
        return self._size

    def open(self) -> int:
        """Open the file at the source; raises the source's error (e.g. FileNotFoundError)."""
        assert isinstance(self._feed, EndpointFeed)
        # A library file's BLAKE3 is known; only other files are hashed whole at the source.
        self._size = self._feed.open(
            self.spec.expected_blake3 is None, self.spec.tunables.control_timeout
        )
        return self._size

    def export_to(self, exporters: list[Exporter]) -> None:
        self._exporters.extend(exporters)

    def cancel(self) -> None:
        self._cancelled.set()

    def run(self) -> None:
        """Stream, verify and commit; always ends with one ``TransferFinished``."""
        whole: str | None = None
        error: str | None = None
        try:
            self._open_sinks()
            self._stream()
            whole = self._feed.close(self.spec.tunables.control_timeout)
            for exporter in self._exporters:
                exporter.finish(whole or self.spec.expected_blake3)
            self._exporters.clear()
            if not self._cancelled.is_set():
                self._commit(whole, self.spec.expected_blake3)
        except StreamBroken as exc:
            error = str(exc)
            log.warning("transfer %s: %s", self.spec.transfer_id, error)
        except CastRayError as exc:  # the source changed, say: that does not pass
            error = exc.message
            self._error_passes = False
            log.warning("transfer %s: %s", self.spec.transfer_id, error)
        except (RayError, OSError) as exc:
            error = f"the source failed: {exc}"
            log.warning("transfer %s: %s", self.spec.transfer_id, error)
        finally:
            for exporter in self._exporters:
                exporter.abort()
            if self._cancelled.is_set() or error is not None:
                self._abort_open_sinks(error or "cancelled")
            self._report_progress()
            self._emit(
                TransferFinished(
                    transfer_id=self.spec.transfer_id,
                    size=self._size,
                    blake3=whole or self.spec.expected_blake3,
                    cancelled=self._cancelled.is_set(),
                    error=error,
                    bytes_served=dict(self._served),
                    chunks_resent=self._resent,
                    chunks_damaged=self._damaged,
                )
            )

    # ---- phases ----------------------------------------------------------------------

    def _open_sinks(self) -> None:
        refs = {
            r.id: r.handle.open_sink.remote(self.spec.transfer_id, self.spec.file_name, self._size)
            for r in self._recipients
        }
        for recipient in self._recipients:
            try:
                ray.get(refs[recipient.id], timeout=self.spec.tunables.control_timeout)
            except (RayError, GetTimeoutError) as exc:
                self._fail(recipient, f"could not create the file: {reason(exc)}")

    def _stream(self) -> None:
        last_report = time.monotonic()
        for chunk in plan_chunks(self._size, self.spec.chunk_size):
            if self._cancelled.is_set():
                return
            chain = self._alive()
            if not chain and not self._exporters:
                return
            if self._limit is not None:
                self._limit.take(chunk.length, self._cancelled.is_set)
            self._send(chunk, chain)
            while self._chunks_in_flight() >= self.spec.window and not self._cancelled.is_set():
                self._collect()
            if time.monotonic() - last_report >= self.spec.tunables.progress_interval:
                self._report_progress()
                last_report = time.monotonic()
        while self._inflight and not self._cancelled.is_set():
            self._collect()
            if time.monotonic() - last_report >= self.spec.tunables.progress_interval:
                self._report_progress()
                last_report = time.monotonic()

    def _commit(self, whole: str | None, expected: str | None) -> None:
        if whole is not None and expected is not None and whole != expected:
            for recipient in self._alive():
                self._fail(recipient, f"the source file changed: BLAKE3 {whole}, not {expected}")
            return
        target = expected or whole
        if target is None:
            for recipient in self._alive():
                self._fail(recipient, "the source file could not be hashed whole")
            return
        tid = self.spec.transfer_id
        refs = {r.id: r.handle.commit_sink.remote(tid, target) for r in self._alive()}
        for recipient in self._alive():
            try:
                result = self._commit_answer(recipient, refs[recipient.id], target)
            except (RayError, GetTimeoutError) as exc:
                self._fail(recipient, f"could not commit the file: {reason(exc)}")
                continue
            if not result.ok:
                self._fail(recipient, result.error or "the commit failed")
                continue
            recipient.path = result.path
            recipient.bytes_done = self._size
            self._emit(
                RecipientFinished(
                    transfer_id=self.spec.transfer_id,
                    recipient=recipient.id,
                    ok=True,
                    path=recipient.path,
                )
            )

    def _commit_answer(self, recipient: _Recipient, ref: Any, target: str) -> CommitOutcome:
        """The commit's answer. One Ray could not deliver (ActorUnavailableError: the commit
        may have been made) is asked for again, for up to ``peer_timeout``: the endpoint
        answers a commit asked again as it did the first."""
        tunables = self.spec.tunables
        deadline = time.monotonic() + tunables.peer_timeout
        while True:
            try:
                outcome: CommitOutcome = ray.get(ref, timeout=tunables.control_timeout)
                return outcome
            except ActorUnavailableError:
                if time.monotonic() >= deadline or self._cancelled.is_set():
                    raise
                log.info(
                    "transfer %s: the answer to %s's commit did not come; it is asked again",
                    self.spec.transfer_id,
                    recipient.id,
                )
                self._cancelled.wait(tunables.progress_interval)
                ref = recipient.handle.commit_sink.remote(self.spec.transfer_id, target)

    # ---- chunks ----------------------------------------------------------------------

    def _send(self, chunk: Chunk, chain: list[_Recipient], retry: bool = False) -> None:
        """Get ``chunk`` from the feed, export it once, and pass it down ``chain``."""
        data, digest = self._feed.chunk(chunk, retry)
        if not retry and self._exporters:
            self._export(chunk, ray.get(data), ray.get(digest))
        if not chain:
            self._feed.release(chunk)
        supplier = self._feed.supplier
        for position, recipient in enumerate(chain):
            forward = position < len(chain) - 1
            status, data = recipient.handle.write_chunk.options(num_returns=2).remote(
                self.spec.transfer_id, chunk.offset, data, digest, forward
            )
            self._inflight[status] = _InFlight(chunk, recipient, supplier)
            self._outstanding[chunk.index] += 1
            supplier = recipient.id

    def _export(self, chunk: Chunk, data: Any, digest: str) -> None:
        for exporter in list(self._exporters):
            try:
                exporter.send(chunk.offset, data, digest)
                self._served[self._feed.supplier] += chunk.length
            except OSError as exc:
                # That cluster's agent reports its own recipients' failure.
                log.warning(
                    "transfer %s: export to %s broke: %s",
                    self.spec.transfer_id,
                    exporter.address,
                    exc,
                )
                exporter.abort()
                self._exporters.remove(exporter)

    def _collect(self) -> None:
        """Wait for some chunk acknowledgements and act on them."""
        if not self._inflight:  # nothing to wait for: a caller must not spin on it
            self._outstanding.clear()
            return
        ready, _ = ray.wait(
            list(self._inflight), num_returns=1, timeout=self.spec.tunables.stall_timeout
        )
        if not ready:
            self._give_up_stalled()
            return
        ready, _ = ray.wait(list(self._inflight), num_returns=len(self._inflight), timeout=0)
        for ref in ready:
            flight = self._inflight.pop(ref)
            self._settle(ref, flight)
            self._outstanding[flight.chunk.index] -= 1
            if self._outstanding[flight.chunk.index] == 0:
                del self._outstanding[flight.chunk.index]
                self._feed.release(flight.chunk)

    def _settle(self, ref: Any, flight: _InFlight) -> None:
        recipient = flight.recipient
        if recipient.failed:
            return
        try:
            outcome: ChunkOutcome = ray.get(ref)
        except RayError as exc:
            if isinstance(cause_of(exc), SourceChanged):
                raise cause_of(exc) from None  # the whole transfer ends with it
            if not _answers(recipient.handle):
                self._fail(recipient, f"its actor or node died: {reason(exc)}", transient=True)
                return
            outcome = ChunkOutcome(ChunkStatus.UPSTREAM_MISSING)
        if outcome.status is ChunkStatus.OK:
            recipient.bytes_done += outcome.bytes
            self._served[flight.supplier] += outcome.bytes
        elif outcome.status in (ChunkStatus.CORRUPT, ChunkStatus.UPSTREAM_MISSING):
            self._retry(flight.chunk, recipient, outcome.status is ChunkStatus.CORRUPT)
        else:
            self._fail(recipient, outcome.error or outcome.status.value)

    def _retry(self, chunk: Chunk, recipient: _Recipient, damaged: bool) -> None:
        """Send a chunk again from the source: one that arrived damaged counts against
        ``chunk_retries``; one lost upstream (a receiver before it failed) is not this
        recipient's failing, and gets more tries."""
        retries = self.spec.tunables.chunk_retries
        counts = recipient.damaged if damaged else recipient.attempts
        counts[chunk.index] += 1
        if damaged and counts[chunk.index] > retries:
            self._fail(
                recipient, f"chunk {chunk.index} failed its check {counts[chunk.index]} times"
            )
            return
        if not damaged and counts[chunk.index] > LOST_RETRIES_FACTOR * max(retries, 1):
            self._fail(
                recipient,
                f"chunk {chunk.index} never reached it: {counts[chunk.index]} "
                "sends of it were lost on the way",
            )
            return
        self._resent += 1
        self._damaged += damaged
        log.info(
            "transfer %s: chunk %d to %s %s; sending it again from the source",
            self.spec.transfer_id,
            chunk.index,
            recipient.id,
            "arrived damaged" if damaged else "was lost upstream",
        )
        self._send(chunk, [recipient], retry=True)

    def _give_up_stalled(self) -> None:
        """Nothing was acknowledged for ``stall_timeout``: the recipients waited on fail, and
        their chunks in flight are forgotten (the window with them, or the run would wait on
        nothing, spinning)."""
        waiting = {flight.recipient.id: flight.recipient for flight in self._inflight.values()}
        for recipient in waiting.values():
            self._fail(
                recipient,
                f"no chunk arrived for {self.spec.tunables.stall_timeout:g} s",
                transient=True,
            )
        for flight in self._inflight.values():
            self._feed.release(flight.chunk)
        self._inflight.clear()
        self._outstanding.clear()

    # ---- bookkeeping -----------------------------------------------------------------

    def _alive(self) -> list[_Recipient]:
        return [r for r in self._recipients if r.failed is None]

    def _chunks_in_flight(self) -> int:
        return sum(1 for count in self._outstanding.values() if count > 0)

    def _fail(self, recipient: _Recipient, reason: str, transient: bool = False) -> None:
        """``transient``: the reason passes (a death, a stall, a broken stream between
        clusters): ``auto_resume`` may take the transfer up again."""
        if recipient.failed is not None:
            return
        recipient.failed = reason
        log.warning("transfer %s: %s failed: %s", self.spec.transfer_id, recipient.id, reason)
        # Fire and forget: the actor may be gone, and then there is nothing to clean.
        recipient.handle.abort_sink.remote(self.spec.transfer_id)
        self._emit(
            RecipientFinished(
                transfer_id=self.spec.transfer_id,
                recipient=recipient.id,
                ok=False,
                error=reason,
                transient=transient,
            )
        )

    def _abort_open_sinks(self, reason: str) -> None:
        for recipient in self._recipients:
            if recipient.failed is None and recipient.path is None:
                recipient.handle.abort_sink.remote(self.spec.transfer_id)
                if not self._cancelled.is_set():
                    self._fail(recipient, reason, transient=self._error_passes)
        self._feed.abort()

    def _report_progress(self) -> None:
        self._emit(
            TransferProgress(
                transfer_id=self.spec.transfer_id,
                bytes_total=self._size,
                bytes_done={r.id: r.bytes_done for r in self._recipients},
            )
        )


def _answers(handle: Any) -> bool:
    """Whether an actor still answers (tells its own death from an upstream's)."""
    try:
        ray.get(handle.describe.remote(), timeout=10)
    except (RayError, GetTimeoutError):
        return False
    return True
