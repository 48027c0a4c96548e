"""How a stream run watches its recipients: each sink's status read (a settling one waits
for it, a trickling one is asked every ``SLOW_POLL``), a dead or silent one cut off, a
whole one committed. The run's state is ``StreamRun``'s (``stream``).
"""

from __future__ import annotations

import logging
import time

import ray
from ray.exceptions import ActorUnavailableError, RayError

from castray.agent.outcomes import CommitOutcome
from castray.agent.reasons import reason
from castray.agent.transports.pace import just_moved
from castray.agent.transports.stream_parts import (
    SOURCE_PROBE_TIMEOUT,
    Recipient,
    answers,
)
from castray.agent.transports.stream_state import MOVE_SETTLE, RunState
from castray.protocol import RecipientFinished

log = logging.getLogger(__name__)

FAST = 4 * 1024 * 1024
"""Bytes per second above which a recipient's progress is asked for every progress interval."""

SLOW_POLL = 2.0
"""Seconds a status call waits on a recipient whose bytes trickle."""


class RecipientWatching(RunState):
    """Each recipient's status read, and acted on: committed, cut off, failed (the state is
    ``StreamRun``'s)."""

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
        asked four times a second, cost a small file's transfer most of its calls), one that
        answers at once (settled, or unreachable) once a progress interval."""
        tunables = self.spec.tunables
        now = time.monotonic()
        for recipient in self._recipients:
            if recipient.committing is not None and now - recipient.asked_at < SLOW_POLL:
                continue  # its sink is closed for the commit: asked only to know it answers
            if recipient.open and recipient.asking is None:
                unsettled = self._unsettled(recipient)
                if not unsettled and now - recipient.asked_at < tunables.progress_interval:
                    continue  # it answers at once: a pass comes with every answer, it must not
                wait = self._poll_wait(recipient) if unsettled else 0.0
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
        # The first answer, and every other one in by then: a sink that settles is heard at
        # once, not when the slowest of the others' waits runs out (the lab's copies ended on
        # a half-second beat, 0.5 s late each at worst).
        ready, pending = ray.wait(
            list(asking), num_returns=1, timeout=tunables.progress_interval * 2
        )
        if ready and pending:
            ready += ray.wait(pending, num_returns=len(pending), timeout=0)[0]
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
                if status.ended and not status.missing and not recipient.ended_at:
                    recipient.ended_at = time.monotonic()  # every byte is in
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
        A small file of one chunk has no progress to show between none and all (bytes count
        once their chunk is verified), so its sinks are asked as rarely as slow ones. One of
        ``FAST`` bytes or more is not: the looks at the chain's paces need answers by the
        first (the lab, 8 MiB in one chunk: no sink had answered at the first look, and a
        slow host paced the one after it a second longer). Just after a move every sink is
        asked as often as a fast one: the looks then take every pace over a second
        (``pace.look_due``). So is every sink while a look has found one slow, to be moved if
        the next look finds it slow too: that look judges it by a pace of its own, not by the
        one that made it suspect."""
        interval = self.spec.tunables.progress_interval
        size = self.spec.size
        fast = recipient.rate >= FAST and (size > self.spec.chunk_size or size >= FAST)
        suspected = self._suspect is not None
        fast = fast or suspected or just_moved(time.monotonic() - self._moved_at)
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
        if (
            recipient.open
            and settled
            and not status.missing
            and recipient.committing is None
            and time.monotonic() >= recipient.commit_again_at
        ):
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
            except ActorUnavailableError:
                self._commit_unanswered(recipient)
                continue
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

    def _commit_unanswered(self, recipient: Recipient) -> None:
        """Ray could not reach the actor with the commit's answer, and the commit may have
        been made: failing the recipient then failed a copy that was in place. It is asked
        again after a look (a commit asked again answers as the first); a silence of
        ``peer_timeout`` cuts it off, resumable."""
        now = time.monotonic()
        if recipient.commit_unanswered_since is None:
            recipient.commit_unanswered_since = recipient.commit_asked
        peer_timeout = self.spec.tunables.peer_timeout
        if now - recipient.commit_unanswered_since > peer_timeout:
            self._cut_off(
                recipient,
                f"Ray could not reach its actor for {peer_timeout:g} s to commit its copy: its "
                "node died or is cut off",
            )
            return
        log.info(
            "transfer %s: the answer to %s's commit did not come (Ray could not reach its "
            "actor); it is asked again",
            self.spec.transfer_id,
            recipient.member.id,
        )
        recipient.commit_again_at = now + self.spec.tunables.progress_interval
