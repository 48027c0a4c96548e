"""Which recipient of a chain is moved to its end, from the paces measured, and how a pace is
measured from its sink's answers (no Ray)."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from castray.agent.dataplane.sink import SinkStatus
from castray.agent.transports.pace import (
    ADAPT_EVERY,
    FIRST_SPAN,
    RIPPLE,
    Pace,
    Slow,
    look_due,
    slow_one,
    try_head,
)
from castray.agent.transports.stream import StreamRun
from castray.agent.transports.stream_parts import Member, Recipient

MB = 1_000_000


def _status(received: int, **changes: Any) -> SinkStatus:
    """A sink's answer with ``received`` bytes in, as ``changes`` say otherwise."""
    fields: dict[str, Any] = {
        "verified_bytes": received,
        "missing": (),
        "ended": False,
        "broken": None,
        "error": None,
        "forwarded_bytes": 0,
        "received_bytes": received,
        "forward_error": None,
        "corrupt_chunks": 0,
        "streams_seen": 0,
    }
    return SinkStatus(**(fields | changes))


def _chain(*rates: float, moved: str = "") -> list[Pace]:
    return [
        Pace(f"h{i + 2}", rate * MB, True, moved == f"h{i + 2}") for i, rate in enumerate(rates)
    ]


def test_a_slow_recipient_in_the_middle_is_the_one_moved() -> None:
    """Host 4 at 10 Mbit/s among hosts at 100: it and the ones after it run at its pace."""
    assert slow_one(_chain(12, 12, 1.2, 1.2, 1.2, 1.2, 1.2)) == Slow("h4", 0.1, 12 * MB)


def test_a_slow_one_after_a_head_that_has_it_all_is_moved() -> None:
    """A short file: the fast head has it all (committed) before the look that finds the
    slow one after it. Its pace is the best before it; it is never judged itself."""
    done = Pace("h2", 9 * MB, False, finished=True)
    chain = [done, Pace("h3", 1.2 * MB, True), Pace("h4", 1.2 * MB, True)]
    assert slow_one(chain) == Slow("h3", 1.2 / 9, 9 * MB)
    # Not finished (idle: its stream ended, not yet committed), its pace sets none.
    idle = Pace("h2", 9 * MB, False)
    assert slow_one([idle, *chain[1:]]) is None
    # Nothing comes after the slow one: nobody is held up.
    assert slow_one([done, Pace("h3", 1.2 * MB, True)]) is None
    # A finished one is never the slow one.
    assert slow_one([Pace("h2", 9 * MB, True), Pace("h3", 1 * MB, False, finished=True)]) is None


def test_the_first_of_two_slow_ones_goes_first_then_the_second() -> None:
    first = slow_one(_chain(12, 1.2, 1.2, 1.2, 1.2, 1.2, 1.2))
    assert first is not None and first.id == "h3"
    # h3 moved to the end: h4 and h5 now run at h2's pace, h6 is the next slow one.
    after = [*_chain(12, 12, 12, 1.2, 1.2, 1.2), Pace("h3", 1.2 * MB, True, True)]
    second = slow_one(after)
    assert second is not None and second.id == "h5"


def test_one_whose_feeder_just_changed_is_not_judged_by_that_look() -> None:
    """h6 (slow) went to the end and h5 feeds h7 now: h7's look shows its new stream's start
    (0 MB/s), not its own pace; and it sets no best for those after it."""
    chain = [*_chain(12, 12, 12), Pace("h7", 0.0, True, refed=True), Pace("h8", 0.5 * MB, True)]
    assert slow_one(chain) is None
    judged = slow_one([*chain[:3], Pace("h7", 0.3 * MB, True), chain[4]])
    assert judged is not None and judged.id == "h7"
    # Nor is one that stalls: its streams are being re-linked, it has no pace to judge.
    assert slow_one([*chain[:3], Pace("h7", 0.0, True), chain[4]]) is None


def test_an_even_chain_moves_no_one() -> None:
    assert slow_one(_chain(12, 11, 12, 11.5)) is None
    assert slow_one(_chain(1.2, 1.2, 1.2)) is None  # the source's pace, or the first one's


def test_nobody_is_moved_when_no_one_after_it_waits() -> None:
    chain = _chain(12, 12, 1.2)
    assert slow_one(chain) is None  # the slow one is last already
    finished = [*_chain(12, 1.2), Pace("h4", 0.0, False)]
    assert slow_one(finished) is None


def test_a_recipient_moved_once_is_not_moved_again_and_a_stall_compares_with_nothing() -> None:
    assert slow_one(_chain(12, 1.2, 1.2, moved="h3")) is None
    assert slow_one(_chain(0.01, 0.001, 0.001)) is None


def test_a_head_the_next_one_keeps_up_with_is_tried_at_the_end() -> None:
    """h2 at 10 Mbit/s heads a chain of 100 Mbit/s hosts: everyone takes its pace, and
    only moving it tells whether the source could feed the next one faster."""
    assert try_head(_chain(1.2, 1.2, 1.2), done=0.1)
    assert try_head(_chain(12, 11.5), done=0.5)  # even: tried once all the same


def test_a_head_is_not_tried_when_it_would_not_tell_or_not_pay() -> None:
    assert not try_head(_chain(12, 1.2), done=0.1)  # the next one is the slow one
    assert not try_head(_chain(1.2, 1.2, moved="h2"), done=0.1)  # tried already
    assert not try_head(_chain(1.2, 1.2), done=0.9)  # nearly done
    assert not try_head(_chain(0.01, 0.01), done=0.1)  # a stall, not a pace
    assert not try_head(_chain(1.2), done=0.1)  # alone
    assert not try_head([Pace("h2", 1.2 * MB, True), Pace("h3", 0.0, False)], done=0.1)
    # A slow one moved to the end still receives: the head would be fed behind it.
    assert not try_head(_chain(1.2, 1.2, 0.1, moved="h4"), done=0.1)
    assert try_head([*_chain(1.2, 1.2), Pace("h4", 0.0, False, True)], done=0.1)
    # One the server put last for its learned pace: judged as any other, the head not tried.
    placed = [*_chain(12, 12), Pace("h4", 1.2 * MB, True, placed=True)]
    assert not try_head(placed, done=0.1)
    behind = [*_chain(12, 12), Pace("h4", 1.2 * MB, True, placed=True), Pace("h5", MB, True)]
    slow = slow_one(behind)
    assert slow is not None and slow.id == "h4"
    # Behind another the server placed there, it stays: the server ordered them.
    both = [*_chain(12, 12), *(Pace(h, 1.2 * MB, True, placed=True) for h in ("h4", "h5"))]
    assert slow_one(both) is None


def test_a_clearly_slow_one_moves_at_once_a_borderline_one_at_the_second_look() -> None:
    """On a busy CPU paces swing: a host at 40% of the pace before it moves only when the
    look before found it slow too; one at 10% (a 10 Mbit/s link among 100) at once."""
    clearly = slow_one(_chain(12, 1.2, 1.2))
    assert clearly is not None and clearly.moves(suspect=None)
    borderline = slow_one(_chain(12, 4.8, 4.8))
    assert borderline is not None and borderline.id == "h3"
    assert not borderline.moves(suspect=None)
    assert not borderline.moves(suspect="h4")
    assert borderline.moves(suspect="h3")


def test_a_pace_is_timed_by_the_sinks_answers_not_by_the_looks() -> None:
    """A sink at 1.25 MB/s answers every 2 s (a slow transfer's poll), out of step with the
    looks: one look sees no new answer, the next two at once. Timed by the looks, its pace
    read 0 then 2.5 MB/s, and a host as fast as the others was moved; timed by the answers,
    it reads 1.25 MB/s at every look."""

    def said(at: float) -> SinkStatus:
        return _status(int(1.25 * MB * at), at=at)

    recipient = Recipient(Member("h3", None, "198.18.0.3:1"))
    rates = []
    for answer_at in (2.0, 2.0, 6.0, 8.0):  # the look at 5.9 s found the answer of 2.0 s
        recipient.status = said(answer_at)
        StreamRun._measure(recipient, seconds=2.0)
        rates.append(round(recipient.rate / MB, 2))
    assert rates == [1.25, 1.25, 1.25, 1.25]


def test_the_hosts_a_move_gives_new_streams_are_not_repaired_in_between() -> None:
    """h3 moved to the end: h4 and every host after it lose their stream and get a new one
    a moment later. A status seen in between (old stream broken, chunks missing, no stream
    open) plans no repair for any of them; a host before the move, in the same state, is
    repaired as ever. (The lab sent the whole file again from the source to three hosts
    whose new streams came a second late.)"""
    broken = {"missing": (0, 1, 2), "broken": "the stream from upstream broke: reset"}
    chain = [Recipient(Member(f"h{n}", None, f"198.18.0.{n}:1")) for n in range(2, 7)]
    for recipient in chain:
        recipient.status = _status(MB, verified_bytes=0, streams_seen=1, **broken)
    h3, h4 = chain[1:3]
    StreamRun._refed(h4, h3, chain)
    # Their new streams finished too (a second stream seen): still not before the hold ends.
    for recipient in chain[1:]:
        recipient.status = _status(MB, verified_bytes=0, streams_seen=3, **broken)
    assert [r.member.id for r in chain if r.needs_repair] == ["h2"]
    assert h3.moved and not h4.moved


def _looks(last_look: float, moved_at: float, until: float) -> list[tuple[float, bool]]:
    """The looks a run takes from ``last_look`` to ``until`` (a watch loop every 0.1 s), and
    whether each may move someone."""
    looks = []
    for tick in range(round(last_look * 10) + 1, round(until * 10) + 1):
        now = tick / 10
        look = look_due(now - last_look, now - moved_at)
        if look is not None:
            looks.append((now, look.decide))
            last_look = now
    return looks


def test_paces_are_looked_at_every_two_seconds_over_spans_of_one() -> None:
    assert _looks(0.0, float("-inf"), 6.0) == [(2.0, True), (4.0, True), (6.0, True)]
    look = look_due(ADAPT_EVERY, float("inf"))
    assert look is not None and look.span == ADAPT_EVERY / 2


def test_after_a_move_the_next_slow_one_is_judged_a_second_after_the_ripple() -> None:
    """h3 moved at 10 s: the hosts after it were paced by it, and one of them may be slow
    too. Its pace is taken afresh once the ripple is over (no move then: it is the ripple
    that shows), and judged a second later, not four (the lab's second slow host of two
    was found 4.3 s after the first, and the hosts after it had its pace meanwhile)."""
    moved = 10.0
    looks = _looks(moved + RIPPLE - ADAPT_EVERY / 2, moved, moved + 8.0)  # as a move sets it
    assert looks[0] == (moved + RIPPLE, False)
    first_decision = next(at for at, decide in looks if decide)
    assert first_decision - moved <= RIPPLE + ADAPT_EVERY / 2 + 0.05
    # Then back to every two seconds.
    assert [round(b[0] - a[0], 1) for a, b in pairwise(looks[-3:])] == [2.0, 2.0]
    during = look_due(ADAPT_EVERY / 2, RIPPLE + ADAPT_EVERY / 2)
    assert during is not None and during.span == ADAPT_EVERY / 4


def test_a_pace_over_a_span_in_which_its_stream_began_is_not_judged() -> None:
    """A move's ripple gives every host after the moved one a new stream. One whose new
    stream came late read at a fraction of its pace over the look's span (the lab moved such
    a fast host behind the slow ones); its pace counts only over a span its stream covered."""
    recipient = Recipient(Member("h5", None, "198.18.0.5:1"))
    recipient.status = _status(2 * MB, at=10.0, stream_began=0.2)
    StreamRun._measure(recipient, seconds=10.0, span=0.5)
    assert recipient.steady  # the first span: its stream is open, from the start
    recipient.status = _status(3 * MB, at=11.0, stream_began=10.8)  # broken, begun again
    StreamRun._measure(recipient, seconds=1.0, span=0.5)
    assert recipient.rate == MB and not recipient.steady
    recipient.status = _status(15 * MB, at=12.0, stream_began=10.8)
    StreamRun._measure(recipient, seconds=1.0, span=0.5)
    assert recipient.rate == 12 * MB and recipient.steady
    recipient.status = _status(15 * MB, at=13.0, stream_began=None)  # no stream open
    StreamRun._measure(recipient, seconds=1.0, span=0.5)
    assert not recipient.steady


def test_a_first_pace_is_taken_from_the_sinks_first_byte_not_the_runs_start() -> None:
    """16 equal hosts down a chain: each gets its first byte 30 ms after the one before it,
    then 12 MB/s. Timed from the run's start (as the lab's first looks did), the last hosts
    read at a fraction of the head's pace, and one was found slow and moved; timed from each
    sink's own first byte, all read the same and no one is slow."""
    paces = []
    for hop in range(15):
        first = 0.2 + 0.03 * hop
        recipient = Recipient(Member(f"h{hop + 2}", None, f"198.18.0.{hop + 2}:1"))
        recipient.status = _status(int(12 * MB * (0.9 - first)), at=0.9, first_byte_at=first)
        StreamRun._measure(recipient, seconds=1.0)
        paces.append(Pace(recipient.member.id, recipient.rate, True))
    assert [round(p.rate / MB, 2) for p in paces] == [12.0] * 15
    assert slow_one(paces) is None


def test_a_first_pace_waits_for_enough_of_the_sinks_own_time() -> None:
    """A first byte a moment before the answer tells no pace: none is taken (the look that
    finds such a one decides nothing, and looks again soon)."""
    recipient = Recipient(Member("h16", None, "198.18.0.16:1"))
    recipient.status = _status(100_000, at=0.9, first_byte_at=0.9 - FIRST_SPAN / 2)
    StreamRun._measure(recipient, seconds=1.0)
    assert recipient.rate == float("inf") and recipient.seen_at is None
    first = 0.9 - FIRST_SPAN / 2
    recipient.status = _status(
        int(12 * MB * 2 * FIRST_SPAN), at=first + 2 * FIRST_SPAN, first_byte_at=first
    )
    StreamRun._measure(recipient, seconds=1.0)
    assert round(recipient.rate / MB, 2) == 12.0
