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

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayError, RayTaskError

from castray.agent.dataplane import all_chunks
from castray.agent.outcomes import CommitOutcome
from castray.agent.reasons import cause_of, reason
from castray.agent.transports.pace import Pace, slow_one, try_head
from castray.agent.transports.stream_parts import (
    Member,
    Recipient,
    Repair,
    Send,
    StreamSpec,
    answers,
    runs_to_repair,
    supplier_for,
)
from castray.errors import OriginFailed, SourceChanged
from castray.protocol import (
    RecipientFinished,
    TransferFinished,
    TransferMessage,
    TransferProgress,
)

log = logging.getLogger(__name__)

FAST = 4 * 1024 * 1024
"""Bytes per second above which a recipient's progress is asked for every progress interval."""
SLOW_POLL = 2.0
"""Seconds a status call waits on a recipient whose bytes trickle."""
ADAPT_EVERY = 2.0
"""Seconds between looks at each recipient's pace (to move a slow one to the chain's end)."""
ADAPT_AFTER = 1.0
"""Seconds before the first look: streams have started. Every second a host ten times
slower than the one before it stays in place, those after it get a tenth of their pace: in
the 16-host lab (48 MiB at 100 Mbit/s, one host at 10), with the first look at 3 s the fast
ones after the slow one took up to 2.1x a unicast, with the first look at 1 s up to 1.6x."""
SOURCE_PROBE_TIMEOUT = 2.0
"""Seconds the source gets to answer once the stream it sent failed in its actor: a live one
answers its control group at once, and the transfer waits on nothing else."""
MOVE_SETTLE = 5.0
"""Seconds after this run moved streams (a slow one to the end, the head tried at the end)
when a broken stream is the move's doing, not a sign of the source's death: the source is
not asked then (a 16-host lab on two cores failed a whole broadcast when the source, busy
moving its stream, did not answer within the probe's 2 s)."""


class StreamRun:
    """Runs one agent's part of a stream transfer to its end on the calling thread."""

    def __init__(
        self,
        spec: StreamSpec,
        emit: Callable[[TransferMessage], None],
        death: Callable[[str], str | None] = lambda _: None,
        lost_touch: Callable[[str, str], None] = lambda _e, _w: None,
    ) -> None:
        self.spec = spec
        self._emit = emit
        self._death = death
        """Why an endpoint is dead, as its cluster's agent saw it (None while alive)."""
        self._lost_touch = lost_touch
        """Tell the agent that an endpoint stopped answering a transfer (it asks it at once)."""
        self._source_asked_at = 0.0
        self._moved_at = float("-inf")
        self._recipients = [Recipient(m) for m in spec.recipients]
        self._cancelled = threading.Event()
        self._sends: dict[Any, Send] = {}
        """Streams being sent: their Ray refs, who sends them, to whom."""
        self._served: dict[str, int] = defaultdict(int)
        self._asked_to_send: set[str] = set()
        """Every endpoint this run asked to send a stream (at its end, each is stopped)."""
        self._resent = 0
        self._resumed = 0
        self._repairs: list[Repair] = []
        """Repairs waiting for their recipients to be re-linked before they are sent."""
        self._unfit: set[str] = set()
        """Suppliers whose repair stream failed: another holder is asked first next time."""
        self._error: str | None = None
        self._error_passes = True
        self._keep_partials = True
        """What recipients verified stays for a resume when the run ends unfinished."""
        """Whether what ended the run passes (the source died) or not (its file changed)."""
        self._paced_at = time.monotonic() + ADAPT_AFTER - ADAPT_EVERY
        self._head_tried = False
        self._suspect: str | None = None
        """Whom the last look at the paces found slow, not clearly enough to move it."""
        self._reported: dict[str, int] | None = None
        """The verified bytes per recipient last reported."""
        self._began = time.monotonic()
        fetching = spec.origin_fetch is not None
        self._digests: list[bytes] = [] if fetching else list(spec.manifest)
        """The manifest as known so far: it grows while the source fetches the file."""
        self._blake3: str | None = None if fetching else spec.expected_blake3
        """The whole file's BLAKE3, once known."""
        if not fetching:  # every sink opens knowing it all
            for recipient in self._recipients:
                recipient.told, recipient.told_whole = len(self._digests), True

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

    def _adapt(self) -> None:
        """Every ``ADAPT_EVERY`` seconds: measure each recipient's pace, and move one that
        holds up those after it to the end of the chain (``pace.slow_one``): the one before it
        then feeds the one after it, from the chunk that one lacks, and the last one feeds it,
        at its own pace. Nothing is sent twice, and the source's stream is not touched."""
        now = time.monotonic()
        seconds = now - self._paced_at
        if seconds < ADAPT_EVERY:
            return
        if self._blake3 is None:
            # Still fetched from its origin: the origin paces every recipient, so their paces
            # say nothing of their links (the lab moved a head that only waited on it).
            self._paced_at = now
            return
        self._paced_at = now
        for recipient in self._recipients:
            self._measure(recipient, min(seconds, now - self._began))
        if now - self._moved_at < 1.5 * ADAPT_EVERY:
            # A move breaks streams down the whole chain, each followed by a new one: the look
            # after it sees that ripple, not the hosts (the lab saw a host at 0 MB/s then moved
            # behind a slow one, and it took as long as that one).
            return
        chain = [r for r in self._recipients if r.open]
        paces = [
            Pace(r.member.id, r.rate, self._unsettled(r), r.moved, now - r.refed_at < 2 * seconds)
            for r in chain
        ]
        slow = slow_one(paces)
        suspect, self._suspect = self._suspect, slow.id if slow is not None else None
        if slow is not None and slow.moves(suspect):
            self._suspect = None
            self._move_to_end(next(r for r in chain if r.member.id == slow.id), chain)
        elif slow is not None:
            log.info(
                "transfer %s: %s takes %.0f%% of the pace before it; moved if the next look "
                "finds it slow too",
                self.spec.transfer_id,
                slow.id,
                100 * slow.share,
            )
        elif self._head_movable(chain) and try_head(paces, chain[0].seen_bytes / self.size):
            self._move_head(chain)

    @staticmethod
    def _measure(recipient: Recipient, seconds: float) -> None:
        """Its pace: the bytes that arrived between its sink's last two answers seen at a
        look, over the time between them on the sink's clock (``seconds``, the time since the
        last look, for the first). A slow transfer's sink answers every 2 s, as often as it is
        looked at: timed by the looks, its pace swung from nothing to double, and an equal
        host was found slow and moved. With no new answer since, its pace stays as it was."""
        status = recipient.status
        if status is None:
            recipient.rate = 0.0
            return
        elapsed = seconds if recipient.seen_at is None else status.at - recipient.seen_at
        if elapsed < ADAPT_EVERY / 2:
            return  # too short a span to tell a pace by (or no answer since)
        recipient.rate = (status.received_bytes - recipient.seen_bytes) / elapsed
        recipient.seen_bytes, recipient.seen_at = status.received_bytes, status.at

    def _move_to_end(self, slow: Recipient, chain: list[Recipient]) -> None:
        position = chain.index(slow)
        before, after, last = chain[position - 1], chain[position + 1], chain[-1]
        tid = self.spec.transfer_id
        log.info(
            "transfer %s: %s takes %.1f MB/s against %.1f MB/s before it; it goes to the end "
            "of the chain, fed by %s",
            tid,
            slow.member.id,
            slow.rate / 1e6,
            before.rate / 1e6,
            last.member.id,
        )
        self._moved_at = time.monotonic()
        self._recipients.remove(slow)
        self._recipients.append(slow)
        lacks = self._lacks
        before.member.handle.redirect.remote(tid, after.member.data_address, lacks(after))
        slow.member.handle.redirect.remote(tid, None, 0)
        last.member.handle.redirect.remote(tid, slow.member.data_address, lacks(slow))
        self._refed(after, slow, chain)

    def _head_movable(self, chain: list[Recipient]) -> bool:
        """The head is fed by this run's source stream (not a resume's repairs, nor another
        cluster), and it was never tried at the end."""
        return (
            self.spec.source is not None
            and not self.spec.resume
            and not self._head_tried
            and len(chain) >= 2
            and chain[0] is self._recipients[0]
        )

    def _move_head(self, chain: list[Recipient]) -> None:
        """Move the head to the end: it stops passing the stream on, the source's stream
        moves to the one after it (from the chunk that one lacks), and the last one feeds
        it (from the chunk it lacks), at its own pace."""
        self._head_tried = True
        self._moved_at = time.monotonic()  # streams break now, whether the move succeeds or not
        head, after, last = chain[0], chain[1], chain[-1]
        tid = self.spec.transfer_id
        source = self.spec.source
        assert source is not None
        lacks = self._lacks
        try:
            ray.get(head.member.handle.redirect.remote(tid, None, 0), timeout=SOURCE_PROBE_TIMEOUT)
            moved = ray.get(
                source.handle.move_stream.remote(
                    tid, head.member.data_address, after.member.data_address, lacks(after)
                ),
                timeout=SOURCE_PROBE_TIMEOUT,
            )
        except (RayError, GetTimeoutError) as exc:
            log.info("transfer %s: could not try another head: %s", tid, reason(exc))
            moved = False
        if not moved:  # the source's stream ended meanwhile: the head goes on as it was
            head.member.handle.redirect.remote(tid, after.member.data_address, lacks(after))
            return
        log.info(
            "transfer %s: the head %s takes %.1f MB/s and the next keeps up: %s is fed by the "
            "source now, and %s by %s",
            tid,
            head.member.id,
            head.rate / 1e6,
            after.member.id,
            head.member.id,
            last.member.id,
        )
        self._recipients.remove(head)
        self._recipients.append(head)
        last.member.handle.redirect.remote(tid, head.member.data_address, lacks(head))
        self._refed(after, head, chain)

    def _lacks(self, recipient: Recipient) -> int:
        """The first chunk ``recipient`` lacks: where a stream that now feeds it starts."""
        verified = recipient.status.verified_bytes if recipient.status else 0
        return verified // self.spec.chunk_size

    @staticmethod
    def _refed(after: Recipient, moved: Recipient, chain: list[Recipient]) -> None:
        """``after`` (now fed by what fed ``moved``) and ``moved`` (now at the end) lose their
        old streams and get new ones: no repair for them before the new ones end. Each one
        after ``after`` gets a new stream too (its feeder passes its own new one on), a
        moment after its old one breaks: none of them is repaired in that moment either
        (the lab sent a whole file again from the source to three hosts whose new streams
        were a second late, on their links beside the new streams)."""
        now = time.monotonic()
        for recipient in (after, moved):
            recipient.refed_at = now
            if recipient.status is not None:
                recipient.streams_before_repair = recipient.status.streams_seen + 1
        moved.moved = True
        for recipient in chain[chain.index(moved) :]:  # moved, after, ..., the last
            recipient.repair_after = max(recipient.repair_after, now + MOVE_SETTLE)

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
    def _unsettled(recipient: Recipient) -> bool:
        """An open sink still receiving (or not asked yet: its stream has just been sent):
        its next status call waits for it to settle, so a small file's transfer takes one
        call that answers "ended", not one that answers at once and another that waits.
        One Ray could not reach is not: its call fails at once, and the look would spin."""
        status = recipient.status
        return (
            recipient.open
            and recipient.unanswered_since is None
            and (status is None or (not status.ended and status.broken is None))
            and not recipient.needs_repair
        )

    def _read_statuses(self) -> None:
        """Ask every open sink how it is doing, one question each at a time: a sink that does
        not answer (its host cut off, its node lost) holds up nobody, and once it has been
        silent for ``peer_timeout`` it is failed and the stream goes around it. One whose
        commit is under way is asked every ``SLOW_POLL`` only (a commit queued behind others,
        asked four times a second, cost a small file's transfer most of its calls)."""
        tunables = self.spec.tunables
        now = time.monotonic()
        for recipient in self._recipients:
            if recipient.committing is not None and now - recipient.asked_at < SLOW_POLL:
                continue  # its sink is closed for the commit: asked only to know it answers
            if recipient.open and recipient.asking is None:
                wait = self._poll_wait(recipient) if self._unsettled(recipient) else 0.0
                told, whole = recipient.told, self._blake3 if not recipient.told_whole else None
                recipient.asking = recipient.member.handle.sink_status.remote(
                    self.spec.transfer_id, wait, told, self._digests[told:], whole
                )
                recipient.told = len(self._digests)  # not changed before the call returns
                recipient.told_whole = recipient.told_whole or whole is not None
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
            except ActorUnavailableError:
                # Not an answer, not a death: Ray could not reach the actor this once (a busy
                # host: the lab's 16 raylets on two cores failed a host mid-broadcast so). It
                # is asked again; a silence of ``peer_timeout`` cuts it off (below).
                if recipient.unanswered_since is None:
                    recipient.unanswered_since = recipient.asked_at
                continue
            except RayError as exc:
                if recipient.open:
                    self._fail(recipient, f"its actor or node died: {reason(exc)}", transient=True)
                continue
            recipient.unanswered_since = None
            if status is not None and recipient.open:
                recipient.status = status
                if status.ended and not recipient.ended_at:
                    recipient.ended_at = time.monotonic()
                knows_whole = recipient.told_whole or self.spec.origin_fetch is None
                recipient.knows = recipient.told if knows_whole else -1
        now = time.monotonic()
        for recipient in self._recipients:
            if recipient.asking is None and recipient.unanswered_since is None:
                continue  # it answered its last question
            silent_since = recipient.unanswered_since or recipient.asked_at  # the earlier
            if recipient.open and now - silent_since > tunables.peer_timeout:
                # Said before the failure, so that the server knows it when it hears of it.
                self._lost_touch(recipient.member.id, "a transfer's stream to it stalled")
                self._cut_off(recipient, self._silence(recipient))

    def _silence(self, recipient: Recipient) -> str:
        """Why a recipient silent for ``peer_timeout`` is cut off. Ray answers "unavailable"
        for the actor of a node just killed as for a live one it could not reach: until it
        learns of the death, only the silence's length tells them apart."""
        seconds = f"{self.spec.tunables.peer_timeout:g} s"
        if recipient.unanswered_since is not None:
            return f"Ray could not reach its actor for {seconds}: its node died or is cut off"
        return f"it did not answer for {seconds}: its host is cut off or its node is lost"

    def _poll_wait(self, recipient: Recipient) -> float:
        """How long a status call may wait for the sink to settle: a progress interval while
        bytes flow fast, longer when they trickle (a slow transfer then costs a call every
        couple of seconds, not four a second; a sink that settles answers at once anyway).
        A file of one chunk has no progress to show between none and all (bytes count once
        their chunk is verified), so its sinks are asked as rarely as slow ones."""
        interval = self.spec.tunables.progress_interval
        fast = recipient.rate >= FAST and self.spec.size > self.spec.chunk_size
        return interval if fast else max(interval, SLOW_POLL)

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
        probe_due = now - self._source_asked_at > SOURCE_PROBE_TIMEOUT
        settled = now - self._moved_at > MOVE_SETTLE
        if source is not None and broke and probe_due and settled:
            self._source_asked_at = now
            if not answers(source.handle, SOURCE_PROBE_TIMEOUT):
                self._error = (
                    f"the source {source.id} died: it stopped answering when its stream broke"
                )
                return
        for recipient in self._recipients:
            if recipient.open and (why := self._death(recipient.member.id)) is not None:
                self._cut_off(recipient, f"its endpoint died: {why}")

    def _cut_off(self, recipient: Recipient, why: str, transient: bool = True) -> None:
        """Fail a recipient that stopped answering or died, and take it out of the chain: its
        upstream stops passing the stream to it (it would block there), its downstream drops
        the stream from it (it would wait there); what the downstream lacks is then repaired."""
        position = self._recipients.index(recipient)
        self._fail(recipient, why, transient=transient)
        tid = self.spec.transfer_id
        before = [r for r in self._recipients[:position] if r.failed is None]
        if before:
            before[-1].member.handle.sever.remote(tid, False, True)
        elif self.spec.source is not None:  # it was the head: only the stream to it ends
            self.spec.source.handle.stop_sending.remote(tid, recipient.member.data_address)
        after = [r for r in self._recipients[position + 1 :] if r.open]
        if after:
            after[0].member.handle.sever.remote(tid, True, False)
        self._relink_around_failed()

    def _act_on(self, recipient: Recipient) -> None:
        status = recipient.status
        if status is None or recipient.path is not None:
            return
        if status.error is not None and recipient.failed is None:
            if self._feeds_anyone(recipient):
                # Its own copy failed; it still passes the stream on until the stream ends.
                self._fail(recipient, status.error, abort=False)
            else:  # nobody needs what it gets: its upstream stops sending it at once
                self._cut_off(recipient, status.error, transient=False)
            return
        settled = status.ended or status.broken is not None
        if not self._all_known(recipient):
            return  # a chunk not verified may just be unchecked yet
        if recipient.open and settled and not status.missing and recipient.committing is None:
            recipient.committing = recipient.member.handle.commit_sink.remote(
                self.spec.transfer_id, self._blake3
            )
            recipient.commit_asked = time.monotonic()

    def _feeds_anyone(self, recipient: Recipient) -> bool:
        position = self._recipients.index(recipient)
        later = any(r.open for r in self._recipients[position + 1 :])
        return later or self.spec.downstream is not None

    def _collect_commits(self) -> None:
        committing = [r.committing for r in self._recipients if r.committing is not None]
        if not committing:
            return
        ready = set(ray.wait(committing, num_returns=len(committing), timeout=0)[0])
        for recipient in self._recipients:
            if recipient.committing is None or recipient.committing not in ready:
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
            log.info(
                "transfer %s: %s committed its copy %.1f s after the run began (every byte "
                "in by %.1f s, its commit asked for at %.1f s)",
                self.spec.transfer_id,
                recipient.member.id,
                time.monotonic() - self._began,
                recipient.ended_at - self._began,
                recipient.commit_asked - self._began,
            )
            self._emit(
                RecipientFinished(
                    transfer_id=self.spec.transfer_id,
                    recipient=recipient.member.id,
                    ok=True,
                    path=outcome.path,
                    kept_bytes=recipient.kept,
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
        to: list[Recipient] | None = None,
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
        self._sends[ref] = Send(supplier.id, to or [])
        self._asked_to_send.add(supplier.id)

    def _collect_sends(self) -> None:
        """Streams that ended: a source that died ends the transfer; a repair stream that
        failed is planned again at once, from another holder if there is one (its recipients
        may never have seen it start, and would otherwise wait for the stall timeout)."""
        if not self._sends:
            return
        ready, _ = ray.wait(list(self._sends), num_returns=len(self._sends), timeout=0)
        for ref in ready:
            sent = self._sends.pop(ref)
            try:
                self._served[sent.supplier] += int(ray.get(ref))
                continue
            except RayError as exc:
                why = reason(exc)
                if isinstance(cause_of(exc), OriginFailed):
                    self._origin_failed(why)
                    return
                if isinstance(cause_of(exc), SourceChanged):
                    self._error, self._error_passes = why, False
                    return
            source = self.spec.source
            if (
                source is not None
                and sent.supplier == source.id
                and not answers(source.handle, SOURCE_PROBE_TIMEOUT)
            ):
                self._error = f"the source {sent.supplier} died: {why}"
                return
            log.info(
                "transfer %s: a stream from %s ended early: %s",
                self.spec.transfer_id,
                sent.supplier,
                why,
            )
            if sent.targets:
                self._unfit.add(sent.supplier)
                now = time.monotonic()
                for recipient in sent.targets:
                    recipient.streams_before_repair = None
                    recipient.failed_repairs += 1
                    recipient.repair_after = now + min(8.0, 2.0 ** (recipient.failed_repairs - 1))

    def _repair(self) -> None:
        """Runs of consecutive open recipients whose streams ended with chunks missing get one
        repair stream each, re-linked around whoever is in between. Never waits: the
        re-links are asked for now, and the stream is sent once they are done
        (``_send_repairs``). A chunk that keeps arriving damaged fails its recipient after
        ``chunk_retries`` checks; chunks missing because a stream broke upstream are not
        retries (only repairs that bring nothing new, in a row, are)."""
        self._send_repairs()
        if not all(self._all_known(r) for r in self._recipients if r.open):
            return  # while the file is fetched, a chunk not verified may be unchecked yet
        retries = self.spec.tunables.chunk_retries
        for run in runs_to_repair(self._recipients):
            for recipient in run:
                status = recipient.status
                assert status is not None
                worst = max(status.damaged, key=lambda d: d[1], default=None)
                if worst is not None and worst[1] > retries:
                    self._fail(recipient, f"chunk {worst[0]} failed its check {worst[1]} times")
                    continue
                if status.verified_bytes > recipient.verified_at_repair:
                    recipient.fruitless = recipient.failed_repairs = 0
                elif recipient.failed_repairs == 0:  # a repair reached it and brought nothing
                    recipient.fruitless += 1
                if recipient.fruitless > retries:
                    self._fail(
                        recipient,
                        f"chunk {status.missing[0]} still missing after {recipient.fruitless} "
                        "attempts to send it (the stream to it kept breaking)",
                    )
            run = [r for r in run if r.open]
            if not run:
                continue
            missing = set().union(*(r.status.missing for r in run if r.status))
            supplier, path = supplier_for(self.spec, self._recipients, run[0], missing, self._unfit)
            self._unfit.clear()
            if supplier is None:
                for recipient in run:
                    self._fail(
                        recipient, "chunks are missing that no one in this cluster has left to send"
                    )
                continue
            relinks = []
            for position, recipient in enumerate(run):
                nxt = run[position + 1].member.data_address if position + 1 < len(run) else None
                relinks.append(recipient.member.handle.relink.remote(self.spec.transfer_id, nxt))
                recipient.streams_before_repair = recipient.status.streams_seen  # type: ignore[union-attr]
                recipient.verified_at_repair = recipient.status.verified_bytes  # type: ignore[union-attr]
            every = all_chunks(self.spec.size, self.spec.chunk_size)
            chunks = [c for c in every if c[0] in missing]
            resumed = all(r.resuming for r in run)
            for recipient in run:
                recipient.resuming = False
            if resumed:
                self._resumed += len(chunks)
            else:
                self._resent += len(chunks)
            log.info(
                "transfer %s: %s %d chunk(s) from %s to %s",
                self.spec.transfer_id,
                "resuming with" if resumed else "sending again",
                len(chunks),
                supplier.id,
                ", ".join(r.member.id for r in run),
            )
            self._repairs.append(Repair(run, supplier, path, chunks, relinks))
        self._send_repairs()

    def _send_repairs(self) -> None:
        """Send each repair whose re-links are done; a recipient whose re-link failed (its
        actor died) fails alone, and its run is planned again."""
        for repair in list(self._repairs):
            ready, _ = ray.wait(repair.relinks, num_returns=len(repair.relinks), timeout=0)
            if len(ready) < len(repair.relinks):
                continue
            self._repairs.remove(repair)
            broken = False
            for recipient, ref in zip(repair.run, repair.relinks, strict=True):
                try:
                    ray.get(ref)
                except RayError as exc:
                    self._cut_off(recipient, f"its actor or node died: {reason(exc)}")
                    broken = True
            if broken or not all(r.open for r in repair.run):
                for recipient in repair.run:
                    recipient.streams_before_repair = None
                continue
            head = repair.run[0].member.data_address
            self._send(repair.supplier, repair.path, head, repair.chunks, True, repair.run)

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

    def _fail(
        self,
        recipient: Recipient,
        why: str,
        abort: bool = True,
        transient: bool = False,
        refused: bool = False,
    ) -> None:
        """``transient``: the reason passes (cut off, a death, a stall), so ``auto_resume``
        may take it up again; a full disk or a chunk that keeps failing its check does not."""
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
                transient=transient,
                kept_bytes=recipient.kept,
                refused=refused,
            )
        )

    def _report_progress(self) -> None:
        """Verified bytes per recipient, when they moved since the last report (the server
        and every watcher handle each report: one a pass would cost them all for nothing)."""
        done = {
            r.member.id: (self.spec.size if r.path else r.status.verified_bytes if r.status else 0)
            for r in self._recipients
        }
        if done == self._reported:
            return
        self._reported = done
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
