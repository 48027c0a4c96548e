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

``StreamRun`` starts the run, loops and ends it; its state is set up in ``stream_state``,
and each of its parts has a module: ``stream_watch`` (the statuses read and acted on,
commits), ``stream_adapt`` (a slow recipient moved out of the others' way),
``stream_repair`` (streams sent, repairs); ``stream_parts`` holds what they share (the spec,
the recipients' state, the repair rules).
"""

from __future__ import annotations

import contextlib
import logging
import time

import ray
from ray.exceptions import GetTimeoutError, RayError, RayTaskError

from castray.agent.dataplane import all_chunks
from castray.agent.reasons import reason
from castray.agent.transports.stream_adapt import ChainAdapting
from castray.agent.transports.stream_parts import (
    SOURCE_PROBE_TIMEOUT,
    Member,
    Recipient,
)
from castray.agent.transports.stream_repair import ChainRepairing
from castray.agent.transports.stream_watch import RecipientWatching
from castray.protocol import (
    TransferFinished,
    TransferProgress,
)

log = logging.getLogger(__name__)


class StreamRun(ChainAdapting, RecipientWatching, ChainRepairing):
    """Runs one agent's part of a stream transfer to its end on the calling thread."""

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
        if source is not None and self.spec.origin_fetch is not None:
            ray.get(
                source.handle.hold_origin.remote(tid, self.spec.origin_fetch),
                timeout=self.spec.tunables.control_timeout,
            )
        elif source is not None and self.spec.source_path is not None:
            ray.get(
                source.handle.hold_source.remote(
                    tid, self.spec.source_path, self.spec.source_identity
                ),
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
                self.spec.await_stream,
            )
        for recipient in self._recipients:
            try:
                _, kept = ray.get(
                    refs[recipient.member.id], timeout=self.spec.tunables.control_timeout
                )
            except RayTaskError as exc:  # the endpoint refused it (no room, say): nothing kept
                self._fail(recipient, f"could not create the file: {reason(exc)}", refused=True)
                continue
            except (RayError, GetTimeoutError) as exc:  # its actor or node did not answer
                self._fail(
                    recipient,
                    f"could not create the file: its endpoint did not answer ({reason(exc)})",
                    transient=True,
                )
                continue
            recipient.kept = int(kept)
            recipient.resuming = self.spec.resume
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
            elif self.spec.source is not None and self.spec.send_on and self.spec.downstream:
                # A resume: what recipients of other clusters lack goes to them straight.
                wanted = set(self.spec.send_on)
                every = all_chunks(self.spec.size, self.spec.chunk_size)
                chunks = [c for c in every if c[0] in wanted]
                self._resumed += len(chunks)
                self._send(
                    self.spec.source, self.spec.source_path, self.spec.downstream, chunks, True
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
            self._follow_origin()
            if self._error is not None:
                return
            # Commits first: a copy committed since the last pass is not asked about again.
            self._collect_commits()
            self._read_statuses()
            self._adapt()
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
                        self._fail(
                            recipient,
                            f"no byte arrived for {tunables.stall_timeout:g} s",
                            transient=True,
                        )
            self._pause()

    def _follow_origin(self) -> None:
        """While the source fetches the file from its origin: learn the chunks' BLAKE3 it
        has made, and the whole file's once the fetch is whole and checked (each sink is
        told with its next status call); a failed fetch ends the transfer with its reason."""
        fetch_id, source = self.spec.origin_fetch, self.spec.source
        if fetch_id is None or source is None or self._blake3 is not None:
            return
        try:
            state = ray.get(
                source.handle.fetch_state.remote(fetch_id, len(self._digests)),
                timeout=self.spec.tunables.control_timeout,
            )
        except (RayError, GetTimeoutError) as exc:
            log.info("transfer %s: the fetch's state did not come: %s", self.spec.transfer_id, exc)
            return  # the source's death is told by _check_deaths
        if state.error is not None:
            self._origin_failed(state.error)
            return
        self._digests.extend(state.digests)
        if state.whole is not None and len(self._digests) == len(self.spec.manifest):
            self._blake3 = state.whole
            log.info(
                "transfer %s: the fetch from its origin is whole and checked, %.1f s after the "
                "run began",
                self.spec.transfer_id,
                time.monotonic() - self._began,
            )

    def _origin_failed(self, why: str) -> None:
        """The file cannot be had: no recipient keeps a part of it (no resume could take
        it up, there is no whole copy to resume from)."""
        self._error, self._error_passes, self._keep_partials = why, False, False

    def _all_known(self, recipient: Recipient) -> bool:
        """Its last status was given knowing the whole manifest (always, unless fetched)."""
        return self.spec.origin_fetch is None or recipient.knows == len(self.spec.manifest)

    def _pause(self) -> None:
        """Until the next look: a commit that ends, or the sinks' own wait for a change (the
        status calls wait up to a progress interval for a sink to settle)."""
        interval = self.spec.tunables.progress_interval
        commits = [r.committing for r in self._recipients if r.committing is not None]
        if commits:  # or a status answer: another copy may have ended meanwhile
            asking = [r.asking for r in self._recipients if r.asking is not None]
            ray.wait([*commits, *asking], num_returns=1, timeout=interval)
        elif not any(self._unsettled(r) for r in self._recipients):
            self._cancelled.wait(interval)

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

    def _open_members(self) -> list[Recipient]:
        return [r for r in self._recipients if r.failed is None]

    def _report_progress(self) -> None:
        """Verified bytes per recipient, when they moved since the last report, at most once
        a progress interval (the server and every watcher handle each report: one per pass,
        and a pass comes with every sink's answer, would cost them all for nothing)."""
        done = {
            r.member.id: (self.spec.size if r.path else r.status.verified_bytes if r.status else 0)
            for r in self._recipients
        }
        now = time.monotonic()
        if done == self._reported or now - self._reported_at < self.spec.tunables.progress_interval:
            return
        self._reported, self._reported_at = done, now
        self._emit(
            TransferProgress(
                transfer_id=self.spec.transfer_id, bytes_total=self.spec.size, bytes_done=done
            )
        )

    def _end(self) -> None:
        tid = self.spec.transfer_id
        cancelled = self._cancelled.is_set()
        # A recipient never asked to send has nothing to stop or count (its forwarding ends
        # with its sink); the source always has its file to close.
        suppliers = [r.member for r in self._recipients if r.member.id in self._asked_to_send]
        if self.spec.source is not None:
            suppliers.append(self.spec.source)
        self._end_sending(suppliers)
        for recipient in self._recipients:
            if recipient.path is None:
                recipient.member.handle.abort_sink.remote(
                    tid, self._keep_partials and not cancelled
                )
                if not cancelled:
                    self._fail(
                        recipient,
                        self._error or "the transfer ended before this copy was whole",
                        abort=False,
                        transient=self._error_passes,
                    )
            if recipient.status is not None:
                self._served[recipient.member.id] += recipient.status.forwarded_bytes
        self._report_progress()
        self._emit(
            TransferFinished(
                transfer_id=tid,
                size=self.spec.size,
                blake3=self._blake3,
                cancelled=cancelled,
                error=self._error,
                bytes_served=dict(self._served),
                chunks_resent=self._resent,
                chunks_resumed=self._resumed,
                chunks_damaged=sum(r.status.corrupt_chunks for r in self._recipients if r.status),
            )
        )

    def _end_sending(self, suppliers: list[Member]) -> None:
        """Stop every supplier's streams (the source closes its file), and count what each
        sent, a stream that failed half-way included (a stream's own answer counts only once
        it ended well): one call each, waited for briefly."""
        tid = self.spec.transfer_id
        asked = {s.handle.end_sending.remote(tid): s.id for s in suppliers}
        ready, _ = ray.wait(list(asked), num_returns=len(asked), timeout=SOURCE_PROBE_TIMEOUT)
        for ref in ready:
            with contextlib.suppress(RayError):
                self._served[asked[ref]] = max(self._served[asked[ref]], int(ray.get(ref)))
