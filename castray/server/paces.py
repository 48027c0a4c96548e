"""What each node's last broadcast taught about its pace, so that the next chain starts with
the slow ones already at its end.

A stream chain passes the bytes on from one recipient to the next; one much slower than the
others paces everyone after it until the agent's looks find it and move it to the end
(``castray.agent.transports.pace``). That first look costs the recipients after it a second
or two at the slow one's pace: in the lab (48 MiB at 100 Mbit/s, one host at 10) the fast
ones after it took 1.5x a unicast. A slow member usually stays slow (a thin link, the link
between two clusters, a busy disk), so the server remembers how each recipient fared in its
last multi-recipient stream, relative to the fastest of that transfer, and the next chain
puts the ones that were clearly slow at its end from the start, the slowest last. Nobody
waits on a recipient at the end. The agent judges a placed one against the recipients after
it that were not placed, and moves it behind them if it is slow; it does not move one behind
another placed one (a move between two slow ones gains nothing and costs each the chunk in
flight). So a fast host put behind a slow one takes its pace: two slow ones that ended close
together are put in the other order next time (``Learned.paced``), where the later one's own
pace shows (a fast host once put behind a slow one was learned slow again, run after run).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from castray.models import Node, RecipientStatus, Transfer, TransferMode, Transport

log = logging.getLogger(__name__)

SLOW_SHARE = 0.4
"""A recipient that took less than this share of the fastest recipient's rate is put at
the chain's end next time. Well under the agent's own threshold (half): the fast ones after
a slow host found at the first look still took about 0.7 of the best, and must not be."""
LEARN_BYTES = 16 * 1024 * 1024
"""Smaller files teach nothing: their copies' times are mostly fixed costs (calls, commit),
and the first look at the paces comes after most of them are done."""
MIN_LAG = 5.0
"""Seconds a slow copy must have taken beyond the fastest one: on a busy machine, commits
and scheduling alone spread the copies of a loopback broadcast by a second or two, and a
recipient that costs the others so little is not worth reordering a chain for."""
PACED_SHARE = 0.85
"""A slow recipient whose rate was at least this share of a faster slow one's may only have
taken that one's pace (the server orders the slow ones, and the agent does not move one
behind another: ``pace.slow_one``). Next time it goes before it, where its own pace shows:
a fast host that once took a slow one's pace behind it is learned fast again at once,
instead of being put behind it run after run."""
REMEMBER_SECONDS = 3600.0
"""How long a learned pace orders chains: a cluster changes (links reshaped, nodes replaced),
and a pace an hour old says little."""


@dataclass(frozen=True)
class Learned:
    """A node's pace in its last multi-recipient stream."""

    share: float
    """Its rate over the fastest recipient's in that transfer (1.0: it was the fastest)."""
    lag: float
    """Seconds its copy took beyond the fastest one's."""
    at: float
    """When it was learned (monotonic seconds)."""
    paced: bool = False
    """Slow, but as fast as a faster slow one, nearly (``PACED_SHARE``): it may have been
    fed by it, and taken its pace rather than its own."""


class PaceBook:
    """The recipients' learned paces, and the chain order they suggest."""

    def __init__(
        self,
        remember: float = REMEMBER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._remember = remember
        self._clock = clock
        self._learned: dict[str, Learned] = {}

    def learn(self, transfer: Transfer) -> None:
        """Take each completed copy's rate from a finished stream transfer to two or more
        recipients of a big enough file, relative to the fastest of them. A resumed
        transfer's rates (part of the file was there already) and a unicast's (nothing to
        compare with) teach nothing."""
        if (
            transfer.transport is not Transport.STREAM
            or transfer.mode is TransferMode.UNICAST
            or transfer.bytes_total < LEARN_BYTES
            or transfer.resumes
        ):
            return
        rates = {
            node: state.throughput_bps
            for node, state in transfer.recipients.items()
            if state.status is RecipientStatus.COMPLETED and state.throughput_bps
        }
        if len(rates) < 2:
            return
        best = max(rates.values())
        now = self._clock()
        size = transfer.bytes_total
        for node, rate in rates.items():
            self._learned[node] = Learned(rate / best, size / rate - size / best, now)
        slow = sorted(n for n in rates if self._slow(self._learned[n], 1.0))
        for node in slow:
            rate = rates[node]
            if any(rate < rates[o] <= rate / PACED_SHARE for o in slow):
                self._learned[node] = replace(self._learned[node], paced=True)
        if slow:
            log.info(
                "transfer %s: %s took less than %.0f%% of the fastest recipient's pace: "
                "next time %s at the end of the chain",
                transfer.id,
                ", ".join(slow),
                100 * SLOW_SHARE,
                "it starts" if len(slow) == 1 else "they start",
            )

    def share(self, node: str) -> float | None:
        """Its learned share, None if nothing recent is known of it."""
        learned = self._recent(node)
        return learned.share if learned is not None else None

    def behind(self, chain: Sequence[Node]) -> list[Node]:
        """The recipients of ``chain`` known to be slow, the slowest last: they go at its
        end. Slow is relative to the fastest known of this chain: the nodes of a cluster
        behind a thin link are all slow alike, and none of them is put last for it. One that
        may only have taken another's pace (``Learned.paced``) goes first of them."""
        learned = {n.id: k for n in chain if (k := self._recent(n.id)) is not None}
        if len(learned) < 2:
            return []
        best = max(k.share for k in learned.values())
        slow = [n for n in chain if n.id in learned and self._slow(learned[n.id], best)]
        return sorted(slow, key=lambda n: (not learned[n.id].paced, -learned[n.id].share))

    def _recent(self, node: str) -> Learned | None:
        learned = self._learned.get(node)
        if learned is None or self._clock() - learned.at > self._remember:
            return None
        return learned

    @staticmethod
    def _slow(learned: Learned, best: float) -> bool:
        """Far slower than ``best`` (a share), and by enough seconds to matter."""
        return learned.share < SLOW_SHARE * best and learned.lag >= MIN_LAG
