"""How a stream run keeps a slow recipient from pacing the others: every ``ADAPT_EVERY``
seconds each recipient's pace is measured (``pace``), and one that holds up those after it
is moved to the end of the chain; a head that cannot keep up with the source is tried at
the end too. Just after a move the looks come sooner (``pace.look_due``): a second slow
host, hidden behind the first, is found a second after the move's ripple. The run's state
is ``StreamRun``'s (``stream``).
"""

from __future__ import annotations

import logging
import time

import ray
from ray.exceptions import GetTimeoutError, RayError

from castray.agent.reasons import reason
from castray.agent.transports.pace import (
    ADAPT_EVERY,
    FIRST_SPAN,
    RIPPLE,
    Pace,
    look_due,
    slow_one,
    try_head,
)
from castray.agent.transports.stream_parts import (
    SOURCE_PROBE_TIMEOUT,
    UNPACED,
    Recipient,
)
from castray.agent.transports.stream_state import MOVE_SETTLE, RunState

log = logging.getLogger(__name__)

MIN_SPAN = 0.1
"""Seconds: the shortest time a whole copy is taken to have come in (a pace's divisor)."""


def _last_open(chain: list[Recipient]) -> Recipient:
    """The chain's last recipient still receiving, that feeds the one moved to the end (one
    that has its copy and passes nothing on could not)."""
    return [r for r in chain if r.open][-1]


def _marks(pace: Pace) -> str:
    """What a look's debug line says of a pace besides its rate."""
    marks = [
        name
        for name, on in (
            ("finished", pace.finished),
            ("idle", not pace.receiving and not pace.finished),
            ("moved", pace.moved),
            ("refed", pace.refed),
        )
        if on
    ]
    return f" ({', '.join(marks)})" if marks else ""


class ChainAdapting(RunState):
    """Moving a slow recipient, or the head, out of the others' way (the state is
    ``StreamRun``'s)."""

    def _adapt(self) -> None:
        """Every ``ADAPT_EVERY`` seconds: measure each recipient's pace, and move one that
        holds up those after it to the end of the chain (``pace.slow_one``): the one before it
        then feeds the one after it, from the chunk that one lacks, and the last one feeds it,
        at its own pace. Nothing is sent twice, and the source's stream is not touched."""
        now = time.monotonic()
        seconds = now - self._paced_at
        look = look_due(seconds, now - self._moved_at)
        if look is None:
            return
        if self._blake3 is None:
            # Still fetched from its origin: the origin paces every recipient, so their paces
            # say nothing of their links (the lab moved a head that only waited on it).
            self._paced_at = now
            return
        self._paced_at = now
        for recipient in self._recipients:
            self._measure(recipient, min(seconds, now - self._began), look.span)
        if not look.decide:
            # A move breaks streams down the whole chain, each followed by a new one: the look
            # in it sees that ripple, not the hosts (the lab saw a host at 0 MB/s then moved
            # behind a slow one, and it took as long as that one). Its paces are the start of
            # the next look's.
            return
        # Those that have it all stay in: their pace is the best before the ones after them.
        chain = [r for r in self._recipients if r.failed is None]
        paces = [self._pace(r, now - r.refed_at < 2 * seconds) for r in chain]
        self._learn_head_trial(chain)
        log.debug(
            "transfer %s: paces %s",
            self.spec.transfer_id,
            ", ".join(f"{p.id} {p.rate / 1e6:.1f} MB/s{_marks(p)}" for p in paces),
        )
        slow = slow_one(paces)
        if slow is None and any(r.open and (r.status is None or r.rate == UNPACED) for r in chain):
            self._paced_at = now - ADAPT_EVERY / 2  # not all have a pace yet: look again soon
        suspect, self._suspect = self._suspect, slow.id if slow is not None else None
        if slow is not None and slow.moves(suspect):
            self._suspect = None
            self._move_to_end(next(r for r in chain if r.member.id == slow.id), chain, slow.best)
        elif slow is not None:
            log.info(
                "transfer %s: %s takes %.0f%% of the pace before it; moved if the next look "
                "finds it slow too",
                self.spec.transfer_id,
                slow.id,
                100 * slow.share,
            )
        elif (
            self._head_movable(chain)
            and try_head(paces, chain[0].seen_bytes / self.size)
            and self._head_worth_trying(chain[0])
        ):
            self._move_head(chain)

    def _pace(self, recipient: Recipient, refed: bool) -> Pace:
        """Its pace as a look judges it. One that has it all took the bytes of this run
        over the time until then: never judged, it sets the pace for those after it (a pace
        taken at a look may be its stream's start)."""
        if recipient.ended_at:
            took = max(recipient.ended_at - self._began, MIN_SPAN)
            rate = (self.size - recipient.kept) / took
            return Pace(recipient.member.id, rate, False, recipient.moved, finished=True)
        return Pace(
            recipient.member.id,
            0.0 if recipient.rate == UNPACED else recipient.rate,  # judged as a stall
            self._unsettled(recipient),
            recipient.moved,
            refed or not recipient.steady,
            placed=recipient.placed,
        )

    @staticmethod
    def _measure(recipient: Recipient, seconds: float, span: float = ADAPT_EVERY / 2) -> None:
        """Its pace: the bytes that arrived between its sink's last two answers seen at a
        look, over the time between them on the sink's clock. A slow transfer's sink answers
        every 2 s, as often as it is looked at: timed by the looks, its pace swung from
        nothing to double, and an equal host was found slow and moved. With no new answer
        since, or none ``span`` seconds after the last, its pace stays as it was. A pace
        over a span in which its stream began is not ``steady``: not judged (a fast host
        whose new stream came late in a move's ripple read at 0.2 MB/s, and was moved behind
        the slow ones).

        The first pace is taken from the sink's first byte, on its clock, over at least
        ``FIRST_SPAN`` (none yet: ``UNPACED``): each hop of a chain gets its first byte a
        little after the one before it, which a pace since the run began counted as
        slowness. A sink with no byte yet reads nothing over ``seconds``."""
        status = recipient.status
        if status is None:
            recipient.rate = 0.0
            return
        since = recipient.seen_at  # None: since the run began
        if since is not None:
            elapsed = status.at - since
        elif status.first_byte_at is not None:
            elapsed, span = status.at - status.first_byte_at, min(span, FIRST_SPAN)
        else:
            elapsed = seconds  # no byte yet: a pace of nothing
        if elapsed < span:
            return  # too short a span to tell a pace by (or no answer since)
        recipient.rate = (status.received_bytes - recipient.seen_bytes) / elapsed
        began = status.stream_began
        recipient.steady = began is not None and (since is None or began <= since)
        recipient.seen_bytes, recipient.seen_at = status.received_bytes, status.at

    def _move_to_end(self, slow: Recipient, chain: list[Recipient], before_pace: float) -> None:
        """``before`` feeds the next one still open after ``slow``, and the last one open
        feeds ``slow``. A ``before`` that has it all may have passed everything on already
        (its end is heard of up to a progress interval late): its answer is waited for, and
        the chain stays as it is if it cannot. Moving anyway would leave the one after
        ``slow`` fed by no one until its stream stalls."""
        position = chain.index(slow)
        before = chain[position - 1]
        after = next(r for r in chain[position + 1 :] if r.open)
        last = _last_open(chain)
        tid = self.spec.transfer_id
        lacks = self._lacks
        redirect = before.member.handle.redirect.remote(
            tid, after.member.data_address, lacks(after)
        )
        answer = self._redirected(redirect)
        if answer is False or (answer is None and before.ended_at):
            log.info(
                "transfer %s: %s passes nothing on any more; %s stays where it is",
                tid,
                before.member.id,
                slow.member.id,
            )
            slow.moved = True  # nothing can move it: not judged again (once is enough)
            return
        log.info(
            "transfer %s: %s takes %.1f MB/s against %.1f MB/s before it; it goes to the end "
            "of the chain, fed by %s",
            tid,
            slow.member.id,
            slow.rate / 1e6,
            before_pace / 1e6,
            last.member.id,
        )
        self._moved_after_ripple()
        self._recipients.remove(slow)
        self._recipients.append(slow)
        slow.member.handle.redirect.remote(tid, None, 0)
        last.member.handle.redirect.remote(tid, slow.member.data_address, lacks(slow))
        self._refed(after, slow, chain)

    def _redirected(self, ref: ray.ObjectRef[bool]) -> bool | None:
        """A redirect's answer; None when none came (it may still be done)."""
        try:
            return bool(ray.get(ref, timeout=SOURCE_PROBE_TIMEOUT))
        except (RayError, GetTimeoutError) as exc:
            log.info("transfer %s: could not move a stream: %s", self.spec.transfer_id, reason(exc))
            return None

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

    def _head_worth_trying(self, head: Recipient) -> bool:
        """Not when a try from this source taught that this head, at this pace, does not
        hold the chain back (``head_trials``); then it is not asked again in this run."""
        source = self.spec.source
        assert source is not None
        if self._head_trials.worth_trying(source.id, head.member.id, head.rate, time.monotonic()):
            return True
        self._head_tried = True
        log.info(
            "transfer %s: the head %s takes %.1f MB/s, as when trying another head gained "
            "nothing: it stays the head",
            self.spec.transfer_id,
            head.member.id,
            head.rate / 1e6,
        )
        return False

    def _learn_head_trial(self, chain: list[Recipient]) -> None:
        """At the first look that decides after a head was tried: the pace of the host the
        source feeds in its place (the chain's head now), against the old head's."""
        if self._head_trial is None or self.spec.source is None or not chain:
            return
        head = chain[0]
        tried, before = self._head_trial
        if head.ended_at or head.member.id == tried:
            self._head_trial = None  # it has it all (or the try was undone): nothing learned
            return
        if not head.steady:
            return  # its pace still shows its new stream's start
        self._head_trial = None
        self._head_trials.learn(self.spec.source.id, tried, before, head.rate, time.monotonic())
        log.debug(
            "transfer %s: the tried head %s took %.1f MB/s, %s in its place %.1f MB/s",
            self.spec.transfer_id,
            tried,
            before / 1e6,
            head.member.id,
            head.rate / 1e6,
        )

    def _move_head(self, chain: list[Recipient]) -> None:
        """Move the head to the end: it stops passing the stream on, the source's stream
        moves to the one after it (from the chunk that one lacks), and the last one feeds
        it (from the chunk it lacks), at its own pace."""
        self._head_tried = True
        self._moved_after_ripple()  # streams break now, whether the move succeeds or not
        head, after, last = chain[0], chain[1], _last_open(chain)
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
        self._head_trial = (head.member.id, head.rate)
        self._recipients.remove(head)
        self._recipients.append(head)
        last.member.handle.redirect.remote(tid, head.member.data_address, lacks(head))
        self._refed(after, head, chain)

    def _moved_after_ripple(self) -> None:
        """Streams are moved now: the next look comes once their ripple is over."""
        self._moved_at = time.monotonic()
        self._paced_at = self._moved_at + RIPPLE - ADAPT_EVERY / 2

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
