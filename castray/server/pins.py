"""Pins: library files kept present and verified on a set of nodes, present and future.

A reconciler looks at every pin each second: the nodes its set names now (a group's members,
a cluster's endpoints, all of them: nodes that join are in), the copy each holds, and the
library's version of the file. A node that lacks the version, or whose copy went or changed,
is served by a transfer from the nearest holder (``pin_plan``); nodes found missing within
``BATCH_SECONDS`` of each other share one. A node that cannot take the file is shown with
the reason and tried again with back-off; it holds up no other. A new version of the file is
rolled out to every node as one transfer, each copy replaced by an atomic rename.

Every ``pin_check_interval`` the endpoints say whether each verified copy is still as it was
verified (size and mtime); ``verify`` reads every copy's BLAKE3 on demand. Pins live in the
history database; their copies' states are rebuilt by the checks after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from castray.errors import (
    CastRayError,
    ClusterUnavailable,
    FileMissing,
    GroupNotFound,
    InvalidRequest,
    NodeNotFound,
    PinNotFound,
)
from castray.models import (
    CopyStatus,
    LibraryFile,
    NodeStatus,
    Pin,
    PinClusters,
    PinCoverageEvent,
    PinCreate,
    PinEndpoints,
    PinGroup,
    PinnedCopy,
    PinNodes,
    PinRemovedEvent,
    PinSavedEvent,
    RecipientStatus,
    TransferCreate,
    TransferMode,
    TransferStatus,
    describe_pin_nodes,
)
from castray.protocol import CopiesTended, TendCopies
from castray.ray_address import is_this_machine
from castray.server.events import EventHub
from castray.server.gateway import AgentGateway
from castray.server.history import History
from castray.server.library import Library
from castray.server.logs import about
from castray.server.pin_plan import Delivery, Place, deliveries
from castray.server.pin_state import copy_name, coverage_of, moved
from castray.server.registry import Registry
from castray.server.transfer_plan import LocatedFile
from castray.server.transfers import TransferService

log = logging.getLogger(__name__)

TICK = 1.0
"""Seconds between looks at every pin."""
BATCH_SECONDS = 1.5
"""Nodes found missing within this many seconds of the first share its transfer."""
RETRY_FIRST = 5.0
RETRY_MAX = 300.0
"""Back-off of a node that failed to take the file: 5 s, doubling, at most 5 min."""


@dataclass
class _Tended:
    """A pin and what the reconciler keeps beside it."""

    pin: Pin
    missing_since: dict[str, datetime] = field(default_factory=dict)
    """Since when each node has lacked the pinned version (join to verified copy)."""
    recheck: set[str] = field(default_factory=set)
    """Nodes back from the dead with a copy they held verified: asked about it at once (a
    node that rejoins with a wiped disk must not wait for the periodic check)."""
    dirty: bool = False


class PinService:
    def __init__(
        self,
        registry: Registry,
        library: Library,
        transfers: TransferService,
        agents: AgentGateway,
        groups: dict[str, list[str]],
        events: EventHub,
        history: History,
        check_interval: float,
        observe_fill: Callable[[float], None] = lambda _: None,
    ) -> None:
        self._registry = registry
        self._library = library
        self._transfers = transfers
        self._agents = agents
        self._groups = groups
        self._events = events
        self._history = history
        self._check_interval = check_interval
        self._observe_fill = observe_fill
        self._pins: dict[str, _Tended] = {}
        for pin in history.pins():
            copies = {n: _restarted(c) for n, c in pin.copies.items()}
            self._pins[pin.id] = _Tended(pin.model_copy(update={"copies": copies}))
        self._task: asyncio.Task[None] | None = None
        self._checked_at = 0.0

    # ---- the API ------------------------------------------------------------------------

    def all(self) -> list[Pin]:
        return [t.pin for t in sorted(self._pins.values(), key=lambda t: t.pin.created_at)]

    def get(self, pin_id: str) -> Pin:
        tended = self._pins.get(pin_id)
        if tended is None:
            raise PinNotFound(f"no pin {pin_id!r}; GET /api/pins lists them")
        return tended.pin

    async def create(self, request: PinCreate) -> tuple[Pin, bool]:
        """The pin, and whether it is new: pinning the same file to the same nodes again
        answers the pin there is (idempotent)."""
        described = await self._describe(request.file)
        self._check_nodes(request.nodes)
        for tended in self._pins.values():
            if tended.pin.file == request.file and tended.pin.nodes == request.nodes:
                return tended.pin, False
        now = _now()
        pin = Pin(
            id=uuid.uuid4().hex[:12],
            file=request.file,
            nodes=request.nodes,
            created_at=now,
            blake3=described.blake3,
            size=described.size,
            coverage=coverage_of({}),
        )
        self._pins[pin.id] = _Tended(pin)
        await asyncio.to_thread(self._history.save_pin, pin)
        self._events.publish(PinSavedEvent(pin=pin))
        log.info("pinned %s to %s (pin %s)", pin.file, describe_pin_nodes(pin.nodes), pin.id)
        await self._tend(self._pins[pin.id])
        return self._pins[pin.id].pin, True

    async def delete(self, pin_id: str, remove_copies: bool) -> int:
        """Unpin; with ``remove_copies``, the copies it made go too. The copies removed."""
        pin = self.get(pin_id)
        del self._pins[pin_id]
        await asyncio.to_thread(self._history.delete_pin, pin_id)
        self._events.publish(PinRemovedEvent(pin_id=pin_id))
        removed = 0
        if remove_copies:
            name = copy_name(pin.file)
            answers = await self._tend_copies("remove", {n: [name] for n in pin.copies})
            removed = sum(a.removed for a in answers)
        log.info("unpinned %s (pin %s), %d copies removed", pin.file, pin_id, removed)
        return removed

    async def verify(self, pin_id: str) -> Pin:
        """Read every copy's BLAKE3 from disk now; a copy that is not the pinned version is
        sent again."""
        tended = self._pins.get(pin_id)
        if tended is None:
            raise PinNotFound(f"no pin {pin_id!r}; GET /api/pins lists them")
        await self._check(tended, "hash")
        await self._tend(tended)
        return tended.pin

    def pinned_names(self) -> dict[str, list[str]]:
        """Per endpoint, the pinned copies a storage sweep must spare."""
        kept: dict[str, list[str]] = {}
        for tended in self._pins.values():
            for node in tended.pin.copies:
                kept.setdefault(node, []).append(copy_name(tended.pin.file))
        return kept

    def copies_by_status(self) -> dict[CopyStatus, int]:
        counts = dict.fromkeys(CopyStatus, 0)
        for tended in self._pins.values():
            for copy in tended.pin.copies.values():
                counts[copy.status] += 1
        return counts

    # ---- the reconciler -------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pins")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK)
            check = loop.time() - self._checked_at >= self._check_interval
            if check:
                self._checked_at = loop.time()
            for tended in list(self._pins.values()):
                try:
                    if check:
                        await self._check(tended, "check")
                    await self._tend(tended)
                except CastRayError as exc:
                    log.info("pin %s: %s", tended.pin.id, exc.message)
                except Exception:
                    log.exception("pin %s: its look failed", tended.pin.id)

    async def _tend(self, tended: _Tended) -> None:
        """One look at a pin: its version, its nodes, each copy; start what is due."""
        now = _now()
        try:
            described = await self._describe(tended.pin.file)
        except FileMissing as exc:
            self._update(tended, problem=exc.message)
            await self._flush(tended)
            return
        if described.blake3 != tended.pin.blake3:
            log.info("pin %s: a new version of %s to roll out", tended.pin.id, tended.pin.file)
            self._update(tended, blake3=described.blake3, size=described.size, problem=None)
            self._events.publish(PinSavedEvent(pin=tended.pin))
        elif tended.pin.problem is not None:
            self._update(tended, problem=None)
        targets = self._targets(tended.pin.nodes)
        copies = {n: c for n, c in tended.pin.copies.items() if n in targets}
        for node in targets:
            copies[node] = await self._look_at(tended, node, copies.get(node), now)
        if copies != tended.pin.copies:
            self._update(tended, copies=copies)
        if tended.recheck:
            recheck, tended.recheck = tended.recheck, set()
            await self._check(tended, "check", recheck)
        await self._deliver(tended, now)
        await self._flush(tended)

    async def _look_at(
        self, tended: _Tended, node: str, copy: PinnedCopy | None, now: datetime
    ) -> PinnedCopy:
        """A copy's next state from what is known of its node and its transfer."""
        alive = self._alive(node)
        version = tended.pin.blake3
        if copy is None:
            tended.missing_since.setdefault(node, now)
            return PinnedCopy(status=CopyStatus.PENDING if alive else CopyStatus.WAITING, since=now)
        if copy.status is CopyStatus.RECEIVING and copy.transfer_id is not None:
            return await self._received(tended, node, copy, now)
        if copy.status is CopyStatus.VERIFIED:
            if copy.blake3 == version:
                # Held while its node is down: waiting, not verified, until asked again.
                return copy if alive else moved(copy, CopyStatus.WAITING, now)
            tended.missing_since.setdefault(node, now)
            return moved(copy, CopyStatus.PENDING if alive else CopyStatus.WAITING, now)
        if not alive:
            return moved(copy, CopyStatus.WAITING, now)
        if copy.status is CopyStatus.WAITING:
            if copy.blake3 == version:
                tended.recheck.add(node)
                return moved(copy, CopyStatus.VERIFIED, now)
            tended.missing_since.setdefault(node, now)
            return moved(copy, CopyStatus.PENDING, now)
        if copy.status is CopyStatus.FAILED and copy.retry_at is not None and now >= copy.retry_at:
            return moved(copy, CopyStatus.PENDING, now)
        return copy

    async def _received(
        self, tended: _Tended, node: str, copy: PinnedCopy, now: datetime
    ) -> PinnedCopy:
        try:
            transfer = await self._transfers.get(copy.transfer_id or "")
        except CastRayError:
            return moved(copy, CopyStatus.PENDING, now)
        state = transfer.recipients.get(node)
        if state is None:
            return moved(copy, CopyStatus.PENDING, now)
        if state.status is RecipientStatus.COMPLETED and transfer.file.blake3 == tended.pin.blake3:
            since = tended.missing_since.pop(node, None)
            if since is not None:
                self._observe_fill((now - since).total_seconds())
            return moved(
                copy, CopyStatus.VERIFIED, now, blake3=transfer.file.blake3, path=state.path
            )
        if state.status is RecipientStatus.COMPLETED:  # an older version: send the new one
            return moved(copy, CopyStatus.PENDING, now)
        if transfer.status in (TransferStatus.QUEUED, TransferStatus.RUNNING) and state.status in (
            RecipientStatus.PENDING,
            RecipientStatus.RUNNING,
        ):
            return copy
        tries = copy.tries + 1
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (tries - 1))
        log.info(
            "pin %s: %s did not take %s: %s; trying again in %.0f s",
            tended.pin.id,
            node,
            tended.pin.file,
            state.error or transfer.error,
            delay,
        )
        return moved(
            copy,
            CopyStatus.FAILED,
            now,
            error=state.error or transfer.error or "the transfer did not complete",
            retry_at=now + timedelta(seconds=delay),
            tries=tries,
        )

    async def _deliver(self, tended: _Tended, now: datetime) -> None:
        """Start the transfers that serve the pending copies, once the batch window of the
        oldest has passed."""
        pin = tended.pin
        pending = [n for n, c in pin.copies.items() if c.status is CopyStatus.PENDING]
        if not pending or pin.blake3 is None:
            return
        oldest = min(pin.copies[n].since for n in pending)
        if (now - oldest).total_seconds() < BATCH_SECONDS:
            return
        holders = [
            Place(n, self._registry.cluster_of(n), self._registry.node(n).counters.bytes_sent)
            for n, c in pin.copies.items()
            if c.status is CopyStatus.VERIFIED and c.blake3 == pin.blake3 and self._alive(n)
        ]
        missing = [Place(n, self._registry.cluster_of(n)) for n in pending]
        plan = deliveries(missing, holders, self._library_readers(), not pin.file.endswith("/"))
        if not plan:
            self._update(
                tended,
                problem="no endpoint on CastRay's machine can read the library to send it",
            )
            return
        for delivery in plan:
            await self._start(tended, delivery, now)

    async def _start(self, tended: _Tended, delivery: Delivery, now: datetime) -> None:
        pin = tended.pin
        request = TransferCreate(
            source_node=delivery.source,
            file=pin.file if delivery.from_library else copy_name(pin.file),
            mode=TransferMode.MULTICAST,
            recipients=list(delivery.recipients),
        )
        located = None
        if not delivery.from_library:  # the holder's own copy, which must be the pinned one
            name = copy_name(pin.file)
            located = LocatedFile(name, name, pin.size, pin.blake3)
        copies = dict(pin.copies)
        try:
            itself = delivery.source in delivery.recipients  # a reader that lacks it too
            transfer = await self._transfers.start(request, located, itself)
        except CastRayError as exc:
            for node in delivery.recipients:
                copies[node] = moved(
                    copies[node],
                    CopyStatus.FAILED,
                    now,
                    error=exc.message,
                    retry_at=now + timedelta(seconds=RETRY_FIRST),
                    tries=copies[node].tries + 1,
                )
            self._update(tended, copies=copies)
            return
        log.info(
            "pin %s: %s to %s from %s (transfer %s)",
            pin.id,
            pin.file,
            ", ".join(delivery.recipients),
            "the library at " + delivery.source if delivery.from_library else delivery.source,
            transfer.id,
            extra=about(transfer_id=transfer.id),
        )
        for node in delivery.recipients:
            copies[node] = moved(copies[node], CopyStatus.RECEIVING, now, transfer_id=transfer.id)
        self._update(tended, copies=copies)

    async def _check(self, tended: _Tended, action: str, only: set[str] | None = None) -> None:
        """Ask the endpoints whether each verified copy (of ``only`` these nodes, if given)
        is still the pinned version: ``check`` by size and mtime, ``hash`` by reading it."""
        pin = tended.pin
        name = copy_name(pin.file)
        verified = [
            n
            for n, c in pin.copies.items()
            if c.status is CopyStatus.VERIFIED and (only is None or n in only)
        ]
        answers = await self._tend_copies(action, {n: [name] for n in verified if self._alive(n)})
        now = _now()
        copies = dict(pin.copies)
        for answer in answers:
            for node, held in answer.copies.items():
                if node in copies and held.get(name) != pin.blake3:
                    log.info(
                        "pin %s: the copy on %s went or changed; sending it again", pin.id, node
                    )
                    tended.missing_since.setdefault(node, now)
                    copies[node] = moved(copies[node], CopyStatus.PENDING, now)
        if copies != pin.copies:
            self._update(tended, copies=copies)

    async def _tend_copies(
        self, action: str, endpoints: dict[str, list[str]]
    ) -> list[CopiesTended]:
        by_cluster: dict[str, dict[str, list[str]]] = {}
        for node, names in endpoints.items():
            if self._registry.has_node(node):
                by_cluster.setdefault(self._registry.cluster_of(node), {})[node] = names
        answers = []
        for cluster, asked in by_cluster.items():
            with contextlib.suppress(ClusterUnavailable):
                answers.append(
                    await self._agents.request(
                        cluster,
                        TendCopies(action=action, endpoints=asked),
                        CopiesTended,
                    )
                )
        return answers

    # ---- helpers --------------------------------------------------------------------------

    async def _describe(self, file: str) -> LibraryFile:
        if not await asyncio.to_thread(self._library.has, file):
            raise FileMissing(
                f"no file {file!r} in the library: upload it first (castray send ./FILE, or "
                "POST /api/upload), then pin it"
            )
        return await asyncio.to_thread(self._library.describe, file)

    def _check_nodes(self, nodes: PinNodes) -> None:
        if isinstance(nodes, PinGroup):
            if nodes.group not in self._groups:
                raise GroupNotFound(f"no group {nodes.group!r}; GET /api/groups lists them")
            if not self._groups[nodes.group]:
                raise InvalidRequest(f"group {nodes.group!r} has no members to pin to")
        elif isinstance(nodes, PinEndpoints):
            for endpoint in nodes.endpoints:
                self._registry.node(endpoint)
        elif isinstance(nodes, PinClusters):
            unknown = [c for c in nodes.clusters if not self._registry.has_cluster(c)]
            if unknown:
                raise NodeNotFound(
                    f"no connected cluster {unknown[0]!r}; GET /api/cluster/external-info "
                    "lists them"
                )

    def _targets(self, nodes: PinNodes) -> set[str]:
        """The nodes the pin covers now, as the registry knows them (dead ones included:
        they get the file when they are back)."""
        known = self._registry.nodes()
        if nodes == "all":
            return {n.id for n in known}
        if isinstance(nodes, PinGroup):
            members = set(self._groups.get(nodes.group, []))
            return {n.id for n in known if n.id in members}
        if isinstance(nodes, PinEndpoints):
            return {n.id for n in known if n.id in nodes.endpoints}
        assert isinstance(nodes, PinClusters)
        return {n.id for n in known if n.cluster in nodes.clusters}

    def _alive(self, node: str) -> bool:
        return self._registry.has_node(node) and self._registry.node(node).status is (
            NodeStatus.ALIVE
        )

    def _library_readers(self) -> list[str]:
        """Alive endpoints on this machine (they can read the library), home's first."""
        local = [
            n
            for n in self._registry.nodes()
            if n.status is NodeStatus.ALIVE and is_this_machine(n.address)
        ]
        return [n.id for n in sorted(local, key=lambda n: (n.is_external, n.id))]

    def _update(self, tended: _Tended, **changes: object) -> None:
        pin = tended.pin.model_copy(update=changes)
        if "copies" in changes:
            pin = pin.model_copy(update={"coverage": coverage_of(pin.copies)})
        tended.pin = pin
        tended.dirty = True

    async def _flush(self, tended: _Tended) -> None:
        """Save and announce a pin that changed (once per look)."""
        if not tended.dirty or tended.pin.id not in self._pins:
            return
        tended.dirty = False
        await asyncio.to_thread(self._history.save_pin, tended.pin)
        self._events.publish(PinCoverageEvent(pin=tended.pin))


def _restarted(copy: PinnedCopy) -> PinnedCopy:
    """A copy as a restart finds it: one that was on its way is sent again."""
    if copy.status in (CopyStatus.RECEIVING, CopyStatus.FAILED):
        return moved(copy, CopyStatus.PENDING, _now())
    return copy


def _now() -> datetime:
    return datetime.now(timezone.utc)
