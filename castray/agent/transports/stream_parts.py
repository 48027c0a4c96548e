"""What a stream run knows: its spec, its recipients' state, the streams on their way, and
the repair rules that read them (which recipients need a repair together, who supplies it).
Pure bookkeeping, no Ray calls but ``answers``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError

from castray.agent.dataplane import SinkStatus
from castray.protocol import AgentTunables

SOURCE_PROBE_TIMEOUT = 2.0
"""Seconds the source gets to answer once the stream it sent failed in its actor: a live one
answers its control group at once, and the transfer waits on nothing else."""
UNPACED = float("inf")
"""A recipient's rate until its first pace is taken: as fast as can be (its sink is asked
every progress interval), and judged by no look (a stall, not a pace)."""


@dataclass(frozen=True)
class Member:
    """A recipient as the run knows it: id, actor, data address."""

    id: str
    handle: Any
    data_address: str


@dataclass(frozen=True)
class StreamSpec:
    transfer_id: str
    file_name: str
    size: int
    chunk_size: int
    manifest: list[bytes]
    expected_blake3: str
    secret: bytes
    recipients: list[Member]
    source: Member | None
    """The source endpoint, when it is in this cluster."""
    source_path: str | None
    downstream: str | None
    """Where the last recipient passes the stream on: the next cluster's first recipient."""
    tunables: AgentTunables
    resume: bool = False
    """Take up what an earlier run left: each sink gets only the chunks its journal lacks."""
    rate_limit: int = 0
    """Bytes per second each stream is sent at, at most; 0: no limit."""
    source_identity: tuple[int, int, int, int] | None = None
    """The source file as its manifest was made of it: the source refuses to send another."""
    send_on: tuple[int, ...] = ()
    """A resume's source part: chunks to stream straight to ``downstream`` (what recipients
    of other clusters lack)."""
    await_stream: bool = False
    """A resume's part in another cluster: its sinks wait for the stream from upstream."""
    origin_fetch: str | None = None
    """The source's fetch from an origin that fills its file as the stream sends it: the
    manifest (empty entries) and ``expected_blake3`` (empty) become known as it goes."""
    placed_last: frozenset[str] = frozenset()
    """Recipients the server put at the chain's end for a slow pace it learned."""


@dataclass
class Recipient:
    """One recipient's state in a run: its last status and what is on its way to it."""

    member: Member
    status: SinkStatus | None = None
    failed: str | None = None
    committing: Any = None
    ended_at: float = 0.0
    commit_asked: float = 0.0
    """When its status first said every byte was in, and when its commit was asked for
    (monotonic): the log says where a copy's last seconds went."""
    commit_unanswered_since: float | None = None
    commit_again_at: float = 0.0
    """Since when Ray could not reach its actor with the commit's answer, and when to ask
    again (the commit may have been made: the endpoint answers a repeat as the first)."""
    asking: Any = None
    """Its status call in flight (one at a time), and since when."""
    asked_at: float = 0.0
    unanswered_since: float | None = None
    """When a status call that Ray could not deliver (the actor unavailable for a moment) was
    asked, with none answered since: a silence that long cuts it off, as one in flight."""
    path: str | None = None
    streams_before_repair: int | None = None
    """While a repair is on its way: how many streams the sink had seen when it was sent."""
    kept: int = 0
    """Verified bytes it took up from an earlier run (a resume): they do not move again."""
    resuming: bool = False
    """Its first repair sends what an earlier run did not: counted as resumed, not resent."""
    verified_at_repair: int = -1
    """Its verified bytes when its last repair was sent."""
    fruitless: int = 0
    """Repairs in a row after which it had no more verified bytes (its streams kept breaking)."""
    failed_repairs: int = 0
    """Repair streams in a row that could not reach it (for the back-off)."""
    moved: bool = False
    """Moved to the end of the chain for its slow pace (once at most), or found slow where
    nothing could move it (its feeder passed everything on): not judged again."""
    placed: bool = False
    """Put at the end by the server for a slow pace it learned (judged as any other)."""
    refed_at: float = float("-inf")
    """When its feeder last changed (monotonic): its pace is not judged until a whole look
    has passed since."""
    seen_bytes: int = 0
    seen_at: float | None = None
    """When its sink answered ``seen_bytes`` (the sink's clock; None: not measured yet)."""
    steady: bool = False
    """Its last pace was taken over a span one stream covered whole (none began in it)."""
    rate: float = UNPACED
    """Bytes per second that arrived over the last look at the chain's pace."""
    repair_after: float = 0.0
    """Not planned again before this time (a repair stream to it failed: back off)."""
    told: int = 0
    """Manifest entries its sink was told of (a file still being fetched: they grow)."""
    told_whole: bool = False
    knows: int = 0
    """Entries its sink knew when it gave its last status (with the whole file's BLAKE3:
    -1 until then): its status tells verified from unchecked only once all are known."""

    @property
    def needs_repair(self) -> bool:
        """Its streams ended with chunks missing, and no repair is on its way (nor backing
        off after one that could not reach it)."""
        status = self.status
        if not self.open or self.committing is not None or status is None:
            return False
        if time.monotonic() < self.repair_after:
            return False
        if self.streams_before_repair is not None:
            if status.streams_seen <= self.streams_before_repair:
                return False
            self.streams_before_repair = None
        return (status.ended or status.broken is not None) and bool(status.missing)

    @property
    def open(self) -> bool:
        """Still to end (not failed, not committed)."""
        return self.failed is None and self.path is None


@dataclass
class Send:
    """A stream being sent: who sends it, and the recipients a repair stream is for."""

    supplier: str
    targets: list[Recipient]


@dataclass
class Repair:
    """A repair planned: sent once its recipients are re-linked in a chain."""

    run: list[Recipient]
    supplier: Member
    path: str | None
    chunks: list[tuple[int, int, int]]
    relinks: list[Any]


def answers(handle: Any, timeout: float) -> bool:
    """Whether an actor still answers (tells its own death from a broken stream)."""
    try:
        ray.get(handle.describe.remote(), timeout=timeout)
    except (RayError, GetTimeoutError):
        return False
    return True


def runs_to_repair(recipients: list[Recipient]) -> list[list[Recipient]]:
    """Consecutive recipients that need repair; a failed one between them is skipped over
    (re-linked around), one that is fine or committed ends a run."""
    runs: list[list[Recipient]] = []
    current: list[Recipient] = []
    for recipient in recipients:
        if recipient.needs_repair:
            current.append(recipient)
        elif recipient.failed is None and current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def supplier_for(
    spec: StreamSpec,
    recipients: list[Recipient],
    head: Recipient,
    chunks: set[int],
    unfit: set[str],
) -> tuple[Member | None, str | None]:
    """The source, else the nearest recipient upstream of ``head`` that has ``chunks``; one
    in ``unfit`` (its last repair stream failed) comes last."""
    holders: list[tuple[Member, str | None]] = []
    if spec.source is not None:
        holders.append((spec.source, spec.source_path))
    position = recipients.index(head)
    for upstream in reversed(recipients[:position]):
        if upstream.path is not None:
            holders.append((upstream.member, upstream.path))
            continue
        status = upstream.status
        if status is None or upstream.failed is not None:
            continue
        # Its missing chunks are listed only once its streams settled: until then it holds
        # the chunks only if it holds them all.
        settled = status.ended or status.broken is not None
        whole = status.verified_bytes == spec.size
        if whole or (settled and not chunks & set(status.missing)):
            holders.append((upstream.member, None))
    holders.sort(key=lambda h: h[0].id in unfit)
    return holders[0] if holders else (None, None)
