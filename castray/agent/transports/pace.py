"""Who feeds whom in a chain, decided from the pace each recipient takes: pure, no Ray.

A chain passes the stream on from one recipient to the next, each at the next one's own pace
(``dataplane.forwarding``); so a recipient slower than those before it (a slow link, a slow
disk, a busy CPU, an ingress limit) paces only the ones after it. Those are better fed by the
recipient before it, and it is better put at the end of the chain, where it waits on nobody
and nobody waits on it: fed by the last recipient from its page cache, at its own pace.

``slow_one`` picks the recipient to move, from the rates measured over the last few seconds;
``try_head`` says when to try the head, whose pace nothing before it in the chain tells;
``look_due`` says when the paces are looked at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ADAPT_EVERY = 2.0
"""Seconds between looks at each recipient's pace (to move a slow one to the chain's end)."""
RIPPLE = 1.5
"""Seconds a move's ripple lasts: every stream after the moved one breaks and is sent again.
The look then takes every pace afresh, and decides ``ADAPT_EVERY / 2`` later, from paces
taken after the ripple. Each look of ``ADAPT_EVERY`` it waited cost the hosts after a second
slow one that much at its pace: in the lab (two slow hosts of eight) the second was found
4.3 s after the first."""
SLOW = 0.5
"""A recipient taking less than this share of the best pace before it in the chain is slow."""
MIN_RATE = 64 * 1024
"""Bytes per second below which a pace is too small to compare (a stall, not a pace)."""
CLEARLY = 0.25
"""A recipient taking less than this share is moved at the first look that finds it slow;
between this and ``SLOW``, only when the look before found it slow too. On a busy CPU paces
swing that much from one look to the next, and each move costs the chunk in flight."""
FIRST_SPAN = ADAPT_EVERY / 8
"""Seconds of a sink's own time since its first byte that its first pace takes at least:
the first look comes 1 s after the run began, and the first bytes of a long chain's last
hosts a few tenths later."""
FOLLOWS = 0.8
"""The one after the head taking at least this share of the head's pace is held to it."""


@dataclass(frozen=True)
class Pace:
    """A recipient of the chain as the last look saw it."""

    id: str
    rate: float
    """Bytes per second that arrived over the last look."""
    receiving: bool
    """Its stream is still coming (not ended, not committed, not failed)."""
    moved: bool = False
    """Moved to the end once already: it is not moved again."""
    refed: bool = False
    """Its feeder changed since the look before: its pace shows the new stream's start, not
    itself (a fast host starved while its old feeder was moved away looked slow)."""
    placed: bool = False
    """Put at the chain's end by the server, for a slow pace it learned: judged as any other
    against the ones after it that were not placed (the server already ordered the placed
    ones, slowest last), and the head is not tried at the end while it receives (the lab's
    head went behind it, and took its pace: 24 s against 4.8)."""
    finished: bool = False
    """It has every byte (its copy commits), and may still feed the next one from it: never
    judged, but its pace is the best before those after it. A short file's fast head is done
    before the second look; a slow one after it was then judged by no one, and paced the
    rest to the end (the lab, 16 MiB: once a first look missed it, a fast host took 1.0 MB/s
    to the end instead of 6)."""


@dataclass(frozen=True)
class Slow:
    """The recipient a look found slow, and its share of the best pace before it."""

    id: str
    share: float
    best: float
    """The best pace before it (bytes per second)."""

    def moves(self, suspect: str | None) -> bool:
        """Whether it goes to the end now: clearly slow, or slow at the look before too
        (``suspect``: whom that look found slow)."""
        return self.share < CLEARLY or self.id == suspect


def slow_one(chain: Sequence[Pace]) -> Slow | None:
    """The first recipient, in chain order, that takes less than ``SLOW`` of the best pace of
    those before it while someone after it still receives: moved to the end, the ones after
    it go as fast as the one before it. None when there is none (the first recipient has no
    one before it to compare with: its pace is the source's or its own).

    One the server placed at the end is not moved behind others it placed there: it ordered
    them by their learned paces, and a move between two slow ones gains nothing while each
    loses the chunk it was receiving, up to 8 MiB at the slow pace (the lab's two slow hosts,
    each moved behind the other: 1.17x and 1.22x their bound, against 1.05x for one)."""
    best = 0.0
    for position, pace in enumerate(chain):
        after = [p for p in chain[position + 1 :] if p.receiving]
        later = bool(after) and not (pace.placed and all(p.placed for p in after))
        if (
            position > 0
            and pace.receiving
            and not pace.moved
            and not pace.refed
            and pace.rate >= MIN_RATE  # a stall (streams being re-linked) is not a pace
            and later
            and best >= MIN_RATE
            and pace.rate < SLOW * best
        ):
            return Slow(pace.id, pace.rate / best, best)
        if (pace.receiving or pace.finished) and not pace.refed:
            best = max(best, pace.rate)
    return None


def try_head(chain: Sequence[Pace], done: float) -> bool:
    """Whether to try the chain's head at its end. The head is fed by the source, so no one
    before it tells its pace from the source's: when the one after it keeps up with it
    (it is fed cut-through, it may be able to go faster), moving the head to the end is the
    one way to know. Tried once per run (a head that was not the bottleneck costs a moment's
    hiccup), and not when ``done`` (the share of the file the head has) is past 80%, nor
    while one moved (or placed) at the end for its slow pace still receives: the head would
    go behind it, and take its pace."""
    if len(chain) < 2 or done > 0.8 or any((p.moved or p.placed) and p.receiving for p in chain):
        return False
    head, after = chain[0], chain[1]
    return (
        head.receiving
        and after.receiving
        and not head.moved
        and head.rate >= MIN_RATE
        and after.rate >= FOLLOWS * head.rate
    )


@dataclass(frozen=True)
class Look:
    """A look at the paces that is due."""

    decide: bool
    """Whether it may move anyone (not in a move's ripple)."""
    span: float
    """The shortest time between a sink's two answers to take a pace over."""


def just_moved(since_move: float) -> bool:
    """Whether a move was ``since_move`` seconds ago, recently enough that the looks come
    every ``ADAPT_EVERY / 2``, over every sink's answers as often as a fast one's."""
    return since_move <= RIPPLE + ADAPT_EVERY


def look_due(since_look: float, since_move: float) -> Look | None:
    """Whether to look at the paces now, ``since_look`` seconds after the last look and
    ``since_move`` after the last move. Every ``ADAPT_EVERY``, over spans of at least half
    that; just after a move, every ``ADAPT_EVERY / 2`` over spans of a quarter (every sink
    answers fast then), and no move decided in its ripple."""
    recent = just_moved(since_move)
    if since_look < (ADAPT_EVERY / 2 if recent else ADAPT_EVERY):
        return None
    return Look(
        decide=since_move >= RIPPLE + ADAPT_EVERY / 4,
        span=ADAPT_EVERY / 4 if recent else ADAPT_EVERY / 2,
    )
