"""What trying a chain's head at its end taught, kept by the agent from one run to the next.

The head is fed by the source, so nothing before it in the chain tells its pace from the
source's: the one way to know whether it holds the chain back is to move it to the end and
let the source feed the one after it (``pace.try_head``). That breaks every stream down the
chain once: in the lab's 16 equal hosts, about a second of a 4.2 s unicast, in every
broadcast, for a head that was never the bottleneck. So when a try shows that the new head,
fed by the source, went no faster than the old one, the agent remembers the old head's pace
(per source and head); a later run from that source whose head keeps that pace is not tried
again. A head that slows down (its link reshaped, its disk busy) is tried again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

GAIN = 1.25
"""A tried head held the chain back only if the host fed by the source in its place went at
least this much faster than it had."""
KEPT = 0.8
"""A head keeps its remembered pace while it takes at least this share of it."""
REMEMBER_SECONDS = 3600.0
"""How long a try's lesson holds (as the server's memory of slow hosts: a cluster changes)."""


@dataclass
class HeadTrials:
    """Per source and head: the pace the head took without holding its chain back, and when
    that was learned (monotonic). Shared by the agent's runs, which run on threads of their
    own."""

    _kept: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def worth_trying(self, source: str, head: str, rate: float, now: float) -> bool:
        """Whether to try ``head`` at the end, taking ``rate`` from ``source``: not when a
        try taught that it does not hold the chain back at that pace."""
        with self._lock:
            kept = self._kept.get((source, head))
        if kept is None or now - kept[1] > REMEMBER_SECONDS:
            return True
        return rate < KEPT * kept[0]

    def learn(self, source: str, head: str, before: float, after: float, now: float) -> None:
        """A try of ``head`` (at ``before`` bytes per second) gave the one fed by the source
        in its place ``after``: remembered when that was no gain, forgotten when it was."""
        with self._lock:
            if after < GAIN * before:
                self._kept[(source, head)] = (before, now)
            else:
                self._kept.pop((source, head), None)
