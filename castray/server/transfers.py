"""The transfer service: plans a transfer, launches it through the agents, follows it to its
end, keeps its history.

The logic is in two pure rooms, ``transfer_plan`` (who, in which order, through which
clusters) and ``transfer_state`` (the allowed transitions); this service only wires them to
the agents (an ``AgentGateway``), the event hub and the history. It hears what agents report
as an ``AgentListener``, subscribed in ``create_app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import PurePosixPath
from typing import TypedDict

from castray.chunks import identity_of
from castray.config import Settings
from castray.errors import (
    BadFileName,
    CastRayError,
    ClusterUnavailable,
    ClusterUnreachable,
    Conflict,
    FileMissing,
    NodeNotFound,
    NodeUnavailable,
    SourceChanged,
    TransferNotFound,
)
from castray.models import (
    EventData,
    NodeStatus,
    RecipientStatus,
    Transfer,
    TransferCreate,
    TransferFinishedEvent,
    TransferMode,
    TransferPage,
    TransferStartedEvent,
    TransferStatus,
    Transport,
)
from castray.protocol import (
    CancelTransfer,
    Discarded,
    DiscardPartials,
    Done,
    FileSize,
    ImportListening,
    ImportTransfer,
    LinksProbed,
    ManifestRead,
    MissingRead,
    ProbeFile,
    ProbeLinks,
    ReadManifest,
    ReadMissing,
    RecipientFinished,
    StartTransfer,
    StreamPlan,
    TransferFinished,
    TransferMessage,
    TransferOpened,
    TransferProgress,
)
from castray.server import origin_fetch, origin_keep
from castray.server.events import EventHub
from castray.server.gateway import AgentGateway
from castray.server.history import History
from castray.server.library import Library, check_file_name
from castray.server.logs import about
from castray.server.paces import PaceBook
from castray.server.registry import Registry
from castray.server.transfer_plan import LocatedFile, TransferPlan, plan_transfer
from castray.server.transfer_state import TransferState
from castray.sizes import binary_size

log = logging.getLogger(__name__)

GOOD_LINK_SECONDS = 60.0
"""How long a data connection that could be made is taken as possible without a new check."""
CHECKPOINT_SECONDS = 0.5
"""How often a running transfer's progress is saved to the history."""
AUTO_RESUME_TRIES = 10
"""Times ``auto_resume`` tries one transfer before it gives up (it says so in the log)."""
AUTO_RESUME_FIRST_DELAY = 1.0
AUTO_RESUME_MAX_DELAY = 60.0
"""Seconds before ``auto_resume``'s tries: doubling from the first, at most the max."""
RESUMABLE = frozenset(
    {TransferStatus.INTERRUPTED, TransferStatus.FAILED, TransferStatus.PARTIALLY_FAILED}
)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class _CommonSpec(TypedDict):
    """What every part of a transfer is told, whatever its transport."""

    transfer_id: str
    file_name: str
    expected_blake3: str | None
    chunk_size: int
    window: int
    rate_limit: int
    unpack_to: str | None


@dataclass
class _Live:
    """A transfer in flight; touched only on the event loop."""

    plan: TransferPlan
    state: TransferState
    done: asyncio.Event = field(default_factory=asyncio.Event)
    saved_at: float = 0.0
    """When its progress was last saved to the history (event-loop time)."""

    @property
    def transfer(self) -> Transfer:
        return self.state.transfer


class TransferService:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        agents: AgentGateway,
        library: Library,
        history: History,
        events: EventHub,
        groups: dict[str, list[str]],
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._agents = agents
        self._library = library
        self._history = history
        self._events = events
        self._groups = groups
        self._live: dict[str, _Live] = {}
        self._resuming: set[str] = set()
        self._waiting: dict[str, asyncio.Task[None]] = {}
        """Transfers ``auto_resume`` waits to resume."""
        self._auto_tries: dict[str, int] = {}
        """``auto_resume``'s tries so far, by transfer (forgotten once one completes it)."""
        self._ending: dict[str, Transfer] = {}
        """Final snapshots whose history write is still under way: answered from here."""
        self._history_writer = ThreadPoolExecutor(1, thread_name_prefix="history")
        self._good_links: dict[tuple[str, str], float] = {}
        self._paces = PaceBook()
        """How each recipient fared in its last broadcast: slow ones start a chain's end."""
        self._keeping: set[asyncio.Task[None]] = set()
        """Ended transfers whose fetched copy the library is taking (``keep_in_library``)."""
        """Data connections that were made lately (sender id, address): until when to trust."""

    # ---- requests ----------------------------------------------------------------------

    async def start(
        self, request: TransferCreate, located: LocatedFile | None = None, itself: bool = False
    ) -> Transfer:
        """Plan the transfer, open the file at the source, and let it run. ``located``: the
        file in the source's storage, as it must be (a pin sends from a holder's copy: its
        BLAKE3 is checked when its manifest is read), instead of looking ``request.file`` up.
        ``itself``: the source may be a recipient too (a pin's library reader that lacks it)."""
        if request.source_url is not None:
            origin = await origin_fetch.prepare(
                request, self._registry, self._groups, self._settings, self._library
            )
            request = origin.request
            fed = await self._fed_from_origin(origin)
            if fed is not None:
                return fed
            located = await origin_fetch.fetch_whole(origin, self._agents, self._settings)
        if located is None:
            assert request.file is not None  # the model requires it without a source_url
            located = await asyncio.to_thread(self._locate, request.file)
        plan = plan_transfer(
            uuid.uuid4().hex[:16],
            request,
            self._registry,
            self._groups,
            located,
            self._settings.transport,
            itself,
            self._paces,
        )
        if plan.transport is Transport.STREAM:
            plan = await self._prepare_stream(plan)
        if plan.needs_size:
            probed = await self._agents.request(
                plan.source.cluster,
                ProbeFile(endpoint_id=plan.source.id, path=located.path),
                FileSize,
            )
            plan = plan.sized(probed.size)
        return await self._run(plan, TransferState.start(plan, datetime.now(timezone.utc)))

    async def _fed_from_origin(self, origin: origin_fetch.OriginRequest) -> Transfer | None:
        """Start a URL-sourced stream that the fetching node feeds as the object arrives
        (the transfer is under way at once, its progress shown from the first bytes); None
        when it cannot be fed so: recipients in other clusters (their part starts knowing
        the size), the object-store transport, or a hop that cannot stream."""
        plan = plan_transfer(
            uuid.uuid4().hex[:16],
            origin.request,
            self._registry,
            self._groups,
            origin.located,
            self._settings.transport,
            paces=self._paces,
        )
        if plan.transport is not Transport.STREAM or plan.remote:
            return None
        if (trouble := await self._link_trouble(plan)) is not None:
            log.info("%s is fetched whole first: %s", origin.shown, trouble)
            return None
        plan = replace(plan, origin=origin.feed(self._settings))
        log.info(
            "fetching %s on %s as %s, sent on as it arrives",
            origin.shown,
            origin.fetcher.id,
            origin.name,
        )
        return await self._run(plan, TransferState.start(plan, datetime.now(timezone.utc)))

    async def resume(self, transfer_id: str) -> Transfer:
        """Run an ended transfer again for the recipients that did not complete it; each gets
        only the chunks it lacks (a stream's recipients keep what they verified)."""
        if transfer_id in self._live or transfer_id in self._resuming:
            raise Conflict(f"transfer {transfer_id} is running; wait for it to end")
        self._resuming.add(transfer_id)
        try:
            return await self._resume(transfer_id)
        finally:
            self._resuming.discard(transfer_id)

    def auto_resume(self, transfer_ids: list[str]) -> None:
        """``auto_resume``: resume each transfer once the nodes it needs are alive again (at
        a start, their endpoints come up with their clusters), trying again with back-off
        while they are not ready, for as long as its recipients keep what they verified."""
        for transfer_id in transfer_ids:
            self._resume_later(transfer_id, delay=0.0)

    def _resume_later(self, transfer_id: str, delay: float | None = None) -> None:
        """Another try at resuming ``transfer_id`` after a back-off (1, 2, 4 ... 60 s), up to
        ``AUTO_RESUME_TRIES``; each waits for its nodes to be alive first."""
        if transfer_id in self._waiting:
            return
        tries = self._auto_tries.get(transfer_id, 0) + 1
        if tries > AUTO_RESUME_TRIES:
            self._auto_tries.pop(transfer_id, None)
            log.warning(
                "transfer %s not resumed: %d tries did not complete it",
                transfer_id,
                AUTO_RESUME_TRIES,
                extra=about(transfer_id=transfer_id),
            )
            return
        self._auto_tries[transfer_id] = tries
        if delay is None:
            delay = min(AUTO_RESUME_MAX_DELAY, AUTO_RESUME_FIRST_DELAY * 2 ** (tries - 1))
        task = asyncio.create_task(self._resume_when_ready(transfer_id, delay))
        self._waiting[transfer_id] = task
        task.add_done_callback(partial(self._stop_waiting, transfer_id))

    def _stop_waiting(self, transfer_id: str, task: asyncio.Task[None]) -> None:
        if self._waiting.get(transfer_id) is task:
            del self._waiting[transfer_id]

    async def _resume_when_ready(self, transfer_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        transfer = await self.get(transfer_id)
        needed = [transfer.source_node, *_unfinished(transfer)]
        patience = self._settings.partial_retention
        if not await self._registry.wait_until(lambda: self._all_alive(needed), patience):
            log.warning(
                "transfer %s not resumed: its nodes did not come back within %.0f s",
                transfer_id,
                patience,
                extra=about(transfer_id=transfer_id),
            )
            self._auto_tries.pop(transfer_id, None)
            return
        # No longer waiting: a run that fails at once schedules the next try from ``_end``.
        if self._waiting.get(transfer_id) is asyncio.current_task():
            del self._waiting[transfer_id]
        try:
            await self.resume(transfer_id)
        except (NodeNotFound, NodeUnavailable, ClusterUnreachable, ClusterUnavailable) as exc:
            log.info(
                "transfer %s: not resumed yet (%s); trying again",
                transfer_id,
                exc.message,
                extra=about(transfer_id=transfer_id),
            )
            self._resume_later(transfer_id)
        except CastRayError as exc:
            self._auto_tries.pop(transfer_id, None)
            log.warning(
                "transfer %s cannot be resumed: %s",
                transfer_id,
                exc.message,
                extra=about(transfer_id=transfer_id),
            )
        else:
            log.info(
                "transfer %s resumed by auto_resume",
                transfer_id,
                extra=about(transfer_id=transfer_id),
            )

    def _all_alive(self, endpoint_ids: list[str]) -> bool:
        """Each alive and answering: an alive endpoint's detail says a probe of it failed or a
        transfer's stream to it stalled, and it is being asked (``Fleet.suspect``)."""
        registry = self._registry
        return all(
            registry.has_node(n)
            and (node := registry.node(n)).status is NodeStatus.ALIVE
            and node.detail is None
            for n in endpoint_ids
        )

    async def _resume(self, transfer_id: str) -> Transfer:
        earlier = await self.get(transfer_id)
        if earlier.status not in RESUMABLE:
            raise Conflict(
                f"transfer {transfer_id} is {earlier.status.value}: only an interrupted, failed "
                "or partially failed transfer can be resumed"
            )
        if earlier.source_file is None:
            raise Conflict(
                f"transfer {transfer_id} was recorded by an older CastRay, which did not keep "
                "what it sent: start it again as a new transfer"
            )
        pending = _unfinished(earlier)
        located = await asyncio.to_thread(self._locate, earlier.source_file)
        request = TransferCreate(
            source_node=earlier.source_node,
            file=earlier.source_file,
            mode=TransferMode.MULTICAST,
            recipients=pending,
            transport=earlier.transport,
            rate_limit=earlier.rate_limit,
        )
        itself = earlier.source_node in pending  # a pin's reader that was its own recipient
        plan = plan_transfer(
            transfer_id,
            request,
            self._registry,
            self._groups,
            located,
            itself=itself,
            paces=self._paces,
        )
        plan = replace(plan, mode=earlier.mode)
        if plan.transport is Transport.STREAM:
            # A hop that cannot be made yet (a host still cut off) is no reason to send it
            # all again through the object store: the resume waits for it instead.
            plan = await self._prepare_stream(plan, fallback=False)
        if plan.file.blake3 is not None and earlier.file.blake3 not in (None, plan.file.blake3):
            raise Conflict(
                f"the source file {earlier.source_file!r} changed since transfer {transfer_id} "
                f"began (it was {binary_size(earlier.file.size)} with BLAKE3 "
                f"{earlier.file.blake3[:16]}..., it is {binary_size(plan.file.size or 0)} with "
                f"{plan.file.blake3[:16]}...): start a new transfer"
            )
        # Stream sinks keep what they verified; the object store keeps nothing: all again.
        plan = replace(plan, resume=plan.transport is Transport.STREAM)
        if plan.resume and plan.remote:
            plan = replace(plan, send_on=await self._missing_elsewhere(plan))
        log.info(
            "transfer %s resumed for %s",
            transfer_id,
            ", ".join(pending),
            extra=about(transfer_id=transfer_id),
        )
        return await self._run(plan, TransferState.resumed(earlier, plan, _now()))

    async def _missing_elsewhere(self, plan: TransferPlan) -> tuple[int, ...]:
        """What the recipients in other clusters than the source's lack, as their journals
        say: a resume streams those chunks to them from the source, once."""
        answers = await asyncio.gather(
            *(
                self._agents.request(
                    cluster,
                    ReadMissing(
                        transfer_id=plan.transfer_id,
                        file_name=plan.file.received_as,
                        endpoints=[n.id for n in nodes],
                        size=plan.file.size or 0,
                        chunk_size=self._settings.chunk_size,
                        blake3=plan.file.blake3 or "",
                    ),
                    MissingRead,
                )
                for cluster, nodes in plan.remote.items()
            )
        )
        return tuple(sorted({i for a in answers for lacks in a.missing.values() for i in lacks}))

    async def _run(self, plan: TransferPlan, state: TransferState) -> Transfer:
        """Announce the transfer, launch it through the agents, and let it run."""
        live = _Live(plan, state)
        self._live[plan.transfer_id] = live
        # Announced before any agent can report on it, so watchers see it start first.
        self._events.publish(TransferStartedEvent(transfer=live.transfer))
        log.info(
            "transfer %s started: %s from %s to %d recipient(s) (%s)",
            plan.transfer_id,
            plan.file.name,
            plan.source.id,
            len(plan.recipients),
            plan.transport.value,
            extra=about(transfer_id=plan.transfer_id),
        )
        if plan.placed_last:
            log.info(
                "transfer %s: %s %s at the end of the chain, for the slow pace taken last time",
                plan.transfer_id,
                ", ".join(sorted(plan.placed_last)),
                "starts" if len(plan.placed_last) == 1 else "start",
                extra=about(transfer_id=plan.transfer_id),
            )
        try:
            size = await self._launch(plan)
        except Exception as exc:
            self._live.pop(plan.transfer_id, None)
            await self._cancel_parts(plan)
            failed = live.state.finish(
                TransferFinished(transfer_id=plan.transfer_id, size=0, blake3=None, error=str(exc)),
                datetime.now(timezone.utc),
            )
            self._events.publish(TransferFinishedEvent(transfer=failed))
            raise
        # The agent's first reports may have been handled already (even its last, for a
        # small file): the sized snapshot is saved only while the transfer is still live.
        if plan.transfer_id in self._live:
            live.state.sized(size)
            await self._save(live.transfer)
        return live.transfer

    async def _prepare_stream(self, plan: TransferPlan, fallback: bool = True) -> TransferPlan:
        """Know the file's manifest, and check every hop the stream takes; a hop that cannot
        be made sends the transfer through the object store instead, and says why (without
        ``fallback``: ``NodeUnavailable``)."""
        if plan.file.library_name is not None:
            known = await asyncio.to_thread(self._library.manifest, plan.file.library_name)
            plan = plan.described(known.size, known.chunks, known.blake3, known.identity)
        elif plan.file.manifest is None:  # an origin's copy is described as it was fetched
            read = await self._agents.request(
                plan.source.cluster,
                ReadManifest(
                    endpoint_id=plan.source.id,
                    path=plan.file.path,
                    chunk_size=self._settings.chunk_size,
                ),
                ManifestRead,
            )
            if plan.file.blake3 is not None and read.blake3 != plan.file.blake3:
                raise SourceChanged(
                    f"{plan.file.path} on {plan.source.id} is not the version to send (BLAKE3 "
                    f"{read.blake3[:12]}..., not {plan.file.blake3[:12]}...)"
                )
            plan = plan.described(read.size, read.manifest, read.blake3, read.identity)
        trouble = await self._link_trouble(plan)
        if trouble is not None and not fallback:
            raise NodeUnavailable(f"transfer {plan.transfer_id} cannot stream yet: {trouble}")
        if trouble is not None:
            log.warning(
                "transfer %s goes through the object store: %s",
                plan.transfer_id,
                trouble,
                extra=about(transfer_id=plan.transfer_id),
            )
            return plan.through_the_object_store(trouble)
        return plan

    async def _link_trouble(self, plan: TransferPlan) -> str | None:
        """Why a hop of the stream cannot be made, or None. Hops that worked a minute ago
        are taken as they are."""
        now = asyncio.get_running_loop().time()
        by_cluster: dict[str, list[tuple[str, str]]] = {}
        for sender, receiver in plan.links:
            if receiver.data_address is None:
                return f"{receiver.id} has no data port yet"
            link = (sender.id, receiver.data_address)
            if self._good_links.get(link, 0.0) > now:
                continue
            by_cluster.setdefault(sender.cluster, []).append(link)
        answers = await asyncio.gather(
            *(
                self._agents.request(cluster, ProbeLinks(links=links), LinksProbed)
                for cluster, links in by_cluster.items()
            )
        )
        failures = {k: v for answer in answers for k, v in answer.failures.items()}
        if failures:
            hop, why = next(iter(failures.items()))
            return f"a data connection {hop} cannot be made ({why})"
        for links in by_cluster.values():
            for made in links:
                self._good_links[made] = now + GOOD_LINK_SECONDS
        return None

    async def _launch(self, plan: TransferPlan) -> int:
        """Every other cluster's agent gets ready first; the source's agent then opens the
        file and sends it. The file's size."""
        if plan.transport is Transport.STREAM:
            return await self._launch_stream(plan)
        spec = self._common_spec(plan)
        exports = []
        for cluster, nodes in plan.remote.items():
            listening = await self._agents.request(
                cluster,
                ImportTransfer(
                    source=plan.source.id,
                    size=plan.file.size or 0,
                    recipients=[n.id for n in nodes],
                    **spec,
                ),
                ImportListening,
            )
            exports.append((listening.host, listening.port, listening.secret))
        opened = await self._agents.request(
            plan.source.cluster,
            StartTransfer(
                source=plan.source.id,
                path=plan.file.path,
                source_identity=plan.file.identity,
                recipients=[n.id for n in plan.local],
                exports=exports,
                **spec,
            ),
            TransferOpened,
        )
        return opened.size

    def _common_spec(self, plan: TransferPlan) -> _CommonSpec:
        """What every part of a transfer is told, whatever its transport."""
        return {
            "transfer_id": plan.transfer_id,
            "file_name": plan.file.received_as,
            "unpack_to": plan.file.unpack_to,
            "expected_blake3": plan.file.blake3,
            "chunk_size": self._settings.chunk_size,
            "window": self._settings.transfer_window,
            "rate_limit": plan.rate_limit,
        }

    async def _launch_stream(self, plan: TransferPlan) -> int:
        """One chain through every cluster: each part's last recipient passes the stream on
        to the next part's first."""
        secret = secrets.token_hex(32)
        parts = plan.parts
        heads = [nodes[0].data_address if nodes else None for _, nodes in parts]

        def stream(part: int) -> StreamPlan:
            later = [head for head in heads[part + 1 :] if head is not None]
            return StreamPlan(
                size=plan.file.size or 0,
                manifest=list(plan.file.manifest or ()),
                secret=secret,
                downstream=later[0] if later else None,
                resume=plan.resume,
                send_on=list(plan.send_on) if part == 0 else [],
                await_stream=part > 0 and bool(plan.send_on),
                placed_last=[n.id for n in parts[part][1] if n.id in plan.placed_last],
            )

        spec = self._common_spec(plan)
        for part in reversed(range(1, len(parts))):
            cluster, nodes = parts[part]
            await self._agents.request(
                cluster,
                ImportTransfer(
                    source=plan.source.id,
                    size=plan.file.size or 0,
                    recipients=[n.id for n in nodes],
                    stream=stream(part),
                    transport=Transport.STREAM,
                    **spec,
                ),
                Done,
            )
        opened = await self._agents.request(
            plan.source.cluster,
            StartTransfer(
                source=plan.source.id,
                path=plan.file.path,
                source_identity=plan.file.identity,
                recipients=[n.id for n in plan.local],
                stream=stream(0),
                transport=Transport.STREAM,
                origin=plan.origin,
                **spec,
            ),
            TransferOpened,
        )
        return opened.size

    async def cancel(self, transfer_id: str) -> Transfer:
        """Stop a transfer in flight; its partial files are removed. Of an ended one, what
        its recipients kept for a resume is removed; its copies and history stay."""
        live = self._live.get(transfer_id)
        if live is None:
            ended = await self.get(transfer_id)
            return await self._discard(ended) if ended.resumable else ended
        await self._cancel_parts(live.plan)
        try:
            await asyncio.wait_for(live.done.wait(), self._settings.cancel_timeout)
        except TimeoutError:
            log.warning(
                "transfer %s did not confirm its cancellation",
                transfer_id,
                extra=about(transfer_id=transfer_id),
            )
        return live.transfer

    async def _discard(self, transfer: Transfer) -> Transfer:
        """Have every unfinished recipient remove what it kept of ``transfer``; recorded in
        its history (``resumable`` false, and the ``error`` says what happened)."""
        waiting = self._waiting.pop(transfer.id, None)
        if waiting is not None:
            waiting.cancel()  # nothing is left for auto_resume to take up
        by_cluster: dict[str, list[str]] = {}
        unreachable: list[str] = []
        for rid in _unfinished(transfer):
            try:
                by_cluster.setdefault(self._registry.node(rid).cluster, []).append(rid)
            except NodeNotFound:
                unreachable.append(rid)
        removed = 0
        for cluster, endpoints in by_cluster.items():
            try:
                answer = await self._agents.request(
                    cluster,
                    DiscardPartials(transfer_id=transfer.id, endpoints=endpoints),
                    Discarded,
                )
            except CastRayError:
                unreachable += endpoints
                continue
            removed += answer.removed
            unreachable += answer.unreachable
        note = f"what its recipients kept for a resume was discarded ({removed} partial files)"
        if unreachable:
            note += (
                f"; {', '.join(sorted(unreachable))} could not be asked: theirs go after "
                "partial_retention"
            )
        error = f"{transfer.error}; {note}" if transfer.error else note
        discarded = transfer.model_copy(update={"resumable": False, "error": error})
        await self._save(discarded)
        log.info("transfer %s: %s", transfer.id, note, extra=about(transfer_id=transfer.id))
        return discarded

    async def _cancel_parts(self, plan: TransferPlan) -> None:
        """Ask every agent with a part of the transfer to stop it (finished parts are gone)."""
        for cluster in plan.clusters:
            with contextlib.suppress(CastRayError):
                await self._agents.request(
                    cluster, CancelTransfer(transfer_id=plan.transfer_id), Done
                )

    async def get(self, transfer_id: str) -> Transfer:
        live = self._live.get(transfer_id)
        if live is not None:
            return live.transfer
        if transfer_id in self._ending:
            return self._ending[transfer_id]
        stored = await asyncio.to_thread(self._history.get, transfer_id)
        if stored is None:
            raise TransferNotFound(f"no transfer {transfer_id!r}; GET /api/transfers lists them")
        return stored

    async def page(self, limit: int, offset: int) -> TransferPage:
        stored, total = await asyncio.to_thread(self._history.page, limit, offset)
        transfers = [self._current(t) for t in stored]
        return TransferPage(transfers=transfers, total=total, limit=limit, offset=offset)

    def _current(self, stored: Transfer) -> Transfer:
        """The freshest snapshot of a transfer the history holds an older one of."""
        live = self._live.get(stored.id)
        return live.transfer if live is not None else self._ending.get(stored.id, stored)

    def live(self) -> list[Transfer]:
        return [live.transfer for live in self._live.values()]

    async def wait(self, transfer_id: str, timeout: float) -> Transfer:
        """Wait for a transfer to finish (used by create-and-transfer callers and the CLI)."""
        live = self._live.get(transfer_id)
        if live is not None:
            await asyncio.wait_for(live.done.wait(), timeout)
        return await self.get(transfer_id)

    def _locate(self, file: str) -> LocatedFile:
        """Where the source finds ``file``: a library file, else a path in its storage.
        Reads the disk: runs in a worker thread."""
        if self._library.has(file):
            where = self._library.path(file)
            identity = identity_of(where.stat())
            described = self._library.describe(file)
            folder = self._library.folder(file) if file.endswith("/") else None
            return LocatedFile(
                str(where),
                file,
                described.size,
                described.blake3,
                library_name=file,
                folder=folder,
                identity=identity,
            )
        if file.endswith("/"):
            raise FileMissing(
                f"no folder {file!r} in the library: upload it first ('castray send ./DIR' "
                "does, or POST /api/upload-folder)"
            )
        relative = PurePosixPath(file)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise FileMissing(
                f"{file!r} is not in the library, and a path on the source must be relative "
                "to its storage directory without '..'"
            )
        try:
            name = check_file_name(relative.name)
        except BadFileName as exc:
            raise FileMissing(f"{file!r} is not in the library: {exc.message}") from exc
        return LocatedFile(str(relative), name)

    # ---- what the agents report (AgentListener) -------------------------------------------

    def on_cluster_down(self, cluster: str, reason: str) -> None:
        """A cluster was lost or disconnected: its transfers in flight fail with the reason."""
        for live in [live for live in self._live.values() if cluster in live.plan.clusters]:
            log.warning(
                "transfer %s failed: cluster %s is down (%s)",
                live.transfer.id,
                cluster,
                reason,
                extra=about(transfer_id=live.transfer.id),
            )
            self._end(
                live,
                TransferFinished(
                    transfer_id=live.transfer.id,
                    size=live.transfer.bytes_total,
                    blake3=live.transfer.file.blake3,
                    error=f"cluster {cluster} is down: {reason}",
                    transient=True,
                ),
            )

    def on_transfer_message(self, message: TransferMessage) -> None:
        live = self._live.get(message.transfer_id)
        if live is None:
            return
        event: EventData | None
        if isinstance(message, TransferProgress):
            event = live.state.progress(message)
            self._checkpoint(live)
        elif isinstance(message, RecipientFinished):
            event = live.state.recipient_finished(message, _now())
        else:
            outcome = live.state.part_finished(message)
            if outcome is not None and live.plan.keep_in_library:  # never on a resume
                keeping = asyncio.create_task(self._keep_then_end(live, outcome))
                self._keeping.add(keeping)
                keeping.add_done_callback(self._keeping.discard)
            elif outcome is not None:
                self._end(live, outcome)
            return
        if event is not None:
            self._events.publish(event)

    async def _keep_then_end(self, live: _Live, outcome: TransferFinished) -> None:
        """The library takes the fetched copy before the transfer is told ended, so that
        whoever waits for its end finds the library file there."""
        plan = live.plan
        kept = await origin_keep.keep(
            self._agents,
            self._library,
            plan.source,
            plan.file.path,
            outcome,
            self._settings.upload_limit_bytes,
        )
        self._end(live, outcome, kept)

    def _end(
        self, live: _Live, outcome: TransferFinished, kept: dict[str, str] | None = None
    ) -> None:
        snapshot = live.state.finish(outcome, datetime.now(timezone.utc))
        self._paces.learn(snapshot)
        if kept:
            snapshot = snapshot.model_copy(update=kept)
        del self._live[snapshot.id]
        self._ending[snapshot.id] = snapshot
        live.done.set()
        saved = self._save(snapshot)
        saved.add_done_callback(lambda _: self._ending.pop(snapshot.id, None))
        saved.add_done_callback(_log_failure)
        self._events.publish(TransferFinishedEvent(transfer=snapshot))
        log.info(
            "transfer %s %s%s",
            snapshot.id,
            snapshot.status.value,
            f": {snapshot.error}" if snapshot.error else "",
            extra=about(transfer_id=snapshot.id),
        )
        if snapshot.status is TransferStatus.COMPLETED:
            self._registry.count(snapshot.source_node, transfers_sent_ok=1)
        elif snapshot.status in (TransferStatus.FAILED, TransferStatus.PARTIALLY_FAILED):
            self._registry.count(snapshot.source_node, transfers_sent_failed=1)
        if snapshot.status is TransferStatus.COMPLETED:
            self._auto_tries.pop(snapshot.id, None)
        elif self._settings.auto_resume and snapshot.resumable and _passing(snapshot):
            self._resume_later(snapshot.id)

    def _checkpoint(self, live: _Live) -> None:
        """Save a running transfer's progress now and then: a server that is killed leaves a
        history that says how far each recipient got."""
        now = asyncio.get_running_loop().time()
        if now - live.saved_at >= CHECKPOINT_SECONDS:
            live.saved_at = now
            self._save(live.transfer).add_done_callback(_log_failure)

    def _save(self, snapshot: Transfer) -> asyncio.Future[None]:
        """Write to the history on one thread, so writes land in the order they were made."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._history_writer, self._history.save, snapshot)

    async def close(self) -> None:
        """At shutdown: what is still in flight is recorded as interrupted."""
        waiting = [*self._waiting.values(), *self._keeping]
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        for live in list(self._live.values()):
            await self._save(
                live.state.interrupt("CastRay stopped while this transfer was in flight", _now())
            )
        self._live.clear()
        self._history_writer.shutdown(wait=True)


def _passing(transfer: Transfer) -> bool:
    """Whether every recipient that did not complete failed for a reason that passes (cut
    off, a death, a stall, CastRay's stop): a full disk or a chunk that keeps failing its
    check would only fail again."""
    return all(
        s.transient
        for s in transfer.recipients.values()
        if s.status is not RecipientStatus.COMPLETED
    )


def _unfinished(transfer: Transfer) -> list[str]:
    """The recipients that did not complete ``transfer``."""
    return [r for r, s in transfer.recipients.items() if s.status is not RecipientStatus.COMPLETED]


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("could not save a transfer to the history: %s", future.exception())
