"""A stream run's state and timings: ``RunState`` sets up what every part of a ``StreamRun``
reads and writes (``stream_watch``, ``stream_adapt``, ``stream_repair``, and ``stream``
itself, each a subclass), and declares the methods one part calls on another."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from castray.agent.transports.head_trials import HeadTrials
from castray.agent.transports.pace import ADAPT_EVERY
from castray.agent.transports.stream_parts import Recipient, Repair, Send, StreamSpec
from castray.protocol import RecipientFinished, TransferMessage

ADAPT_AFTER = 1.0
"""Seconds before the first look: streams have started. Every second a host ten times
slower than the one before it stays in place, those after it get a tenth of their pace: in
the 16-host lab (48 MiB at 100 Mbit/s, one host at 10), with the first look at 3 s the fast
ones after the slow one took up to 2.1x a unicast, with the first look at 1 s up to 1.6x."""

MOVE_SETTLE = 5.0
"""Seconds after this run moved streams (a slow one to the end, the head tried at the end)
when a broken stream is the move's doing, not a sign of the source's death: the source is
not asked then (a 16-host lab on two cores failed a whole broadcast when the source, busy
moving its stream, did not answer within the probe's 2 s)."""

log = logging.getLogger(__name__)


class RunState:
    """What a stream run knows as it goes (set up here, once for all its parts)."""

    def __init__(
        self,
        spec: StreamSpec,
        emit: Callable[[TransferMessage], None],
        death: Callable[[str], str | None] = lambda _: None,
        lost_touch: Callable[[str, str], None] = lambda _e, _w: None,
        head_trials: HeadTrials | None = None,
    ) -> None:
        self.spec = spec
        self._emit = emit
        self._death = death
        """Why an endpoint is dead, as its cluster's agent saw it (None while alive)."""
        self._lost_touch = lost_touch
        """Tell the agent that an endpoint stopped answering a transfer (it asks it at once)."""
        self._source_asked_at = 0.0
        self._moved_at = float("-inf")
        self._recipients = [Recipient(m, placed=m.id in spec.placed_last) for m in spec.recipients]
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
        self._head_trial: tuple[str, float] | None = None
        """The head tried at the end in this run, and its pace then: what the host the
        source feeds in its place takes is learned at the next look that decides."""
        self._head_trials = head_trials if head_trials is not None else HeadTrials()
        self._suspect: str | None = None
        """Whom the last look at the paces found slow, not clearly enough to move it."""
        self._reported: dict[str, int] | None = None
        """The verified bytes per recipient last reported."""
        self._reported_at = float("-inf")
        """When it was (monotonic): reports come once a progress interval at most."""
        self._began = time.monotonic()
        fetching = spec.origin_fetch is not None
        self._digests: list[bytes] = [] if fetching else list(spec.manifest)
        """The manifest as known so far: it grows while the source fetches the file."""
        self._blake3: str | None = None if fetching else spec.expected_blake3
        """The whole file's BLAKE3, once known."""
        if not fetching:  # every sink opens knowing it all
            for recipient in self._recipients:
                recipient.told, recipient.told_whole = len(self._digests), True

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

    if TYPE_CHECKING:  # the run's own, or one part's

        @property
        def size(self) -> int: ...

        @staticmethod
        def _unsettled(recipient: Recipient) -> bool: ...

        def _all_known(self, recipient: Recipient) -> bool: ...

        def _origin_failed(self, why: str) -> None: ...

        def _relink_around_failed(self) -> None: ...

        def _cut_off(self, recipient: Recipient, why: str, transient: bool = True) -> None: ...
