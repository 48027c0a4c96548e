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
    ProbeFile,
    ProbeLinks,
    ReadManifest,
    RecipientFinished,
    StartTransfer,
    StreamPlan,
    TransferFinished,
    TransferMessage,
    TransferOpened,
    TransferProgress,
)
from castray.server.events import EventHub
from castray.server.gateway import AgentGateway
from castray.server.history import History
from castray.server.library import Library, check_file_name
from castray.server.logs import about
from castray.server.registry import Registry
from castray.server.transfer_plan import LocatedFile, TransferPlan, plan_transfer
from castray.server.transfer_state import TransferState
from castray.sizes import binary_size

log = logging.getLogger(__name__)

GOOD_LINK_SECONDS = 60.0
"""How long a data connection that could be made is taken as possible without a new check."""
CHECKPOINT_SECONDS = 0.5
"""How often a running transfer's progress is saved to the history."""
AUTO_RESUME_ATTEMPTS = 5
DEATH_NOTICE_SECONDS = 30.0
"""Seconds within which a node whose death ended a transfer is known dead here (its Ray node
marked dead, or its actor stopped answering)."""
AUTO_RESUME_RETRY = 2.0
"""Seconds between ``auto_resume``'s attempts once the nodes a transfer needs are alive."""
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
        self._ending: dict[str, Transfer] = {}
        """Final snapshots whose history write is still under way: answered from here."""
        self._history_writer = ThreadPoolExecutor(1, thread_name_prefix="history")
        self._good_links: dict[tuple[str, str], float] = {}
        """Data connections that were made lately (sender id, address): until when to trust."""

    # ---- requests ----------------------------------------------------------------------

    async def start(self, request: TransferCreate) -> Transfer:
        """Plan the transfer, open the file at the source, and let it run."""
        located = await asyncio.to_thread(self._locate, request.file)
        plan = plan_transfer(
            uuid.uuid4().hex[:16],
            request,
            self._registry,
            self._groups,
            located,
            self._settings.transport,
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

    def auto_resume(self, transfer_ids: list[str], after_a_death: bool = False) -> None:
        """``auto_resume``: resume each transfer once the nodes it needs are alive (after a
        start, their endpoints come up with their clusters), for as long as its recipients
        keep what they verified. ``after_a_death``: only if one of them is seen dead soon (a
        recipient that failed for another reason, a full disk say, would only fail again),
        and then once it is back."""
        for transfer_id in transfer_ids:
            if transfer_id not in self._waiting:
                task = asyncio.create_task(self._resume_when_ready(transfer_id, after_a_death))
                self._waiting[transfer_id] = task
                task.add_done_callback(partial(self._stop_waiting, transfer_id))

    def _stop_waiting(self, transfer_id: str, _: object) -> None:
        self._waiting.pop(transfer_id, None)

    async def _resume_when_ready(self, transfer_id: str, after_a_death: bool) -> None:
        transfer = await self.get(transfer_id)
        needed = [transfer.source_node, *_unfinished(transfer)]
        registry = self._registry
        if after_a_death and not await registry.wait_until(
            lambda: not self._all_alive(needed), DEATH_NOTICE_SECONDS
        ):
            return  # its nodes are alive: it failed for another reason
        patience = self._settings.partial_retention
        if not await registry.wait_until(lambda: self._all_alive(needed), patience):
            log.warning(
                "transfer %s not resumed: its nodes did not come back within %.0f s",
                transfer_id,
                patience,
                extra=about(transfer_id=transfer_id),
            )
            return
        for _ in range(AUTO_RESUME_ATTEMPTS):
            try:
                await self.resume(transfer_id)
            except (NodeNotFound, NodeUnavailable, ClusterUnreachable, ClusterUnavailable):
                await asyncio.sleep(AUTO_RESUME_RETRY)  # alive, but its cluster not quite ready
            except CastRayError as exc:
                log.warning(
                    "transfer %s cannot be resumed: %s",
                    transfer_id,
                    exc.message,
                    extra=about(transfer_id=transfer_id),
                )
                return
            else:
                log.info(
                    "transfer %s resumed by auto_resume",
                    transfer_id,
                    extra=about(transfer_id=transfer_id),
                )
                return
        log.warning(
            "transfer %s not resumed: its nodes were alive but not ready after %d tries",
            transfer_id,
            AUTO_RESUME_ATTEMPTS,
            extra=about(transfer_id=transfer_id),
        )

    def _all_alive(self, endpoint_ids: list[str]) -> bool:
        registry = self._registry
        return all(
            registry.has_node(n) and registry.node(n).status is NodeStatus.ALIVE
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
        plan = plan_transfer(transfer_id, request, self._registry, self._groups, located)
        if plan.remote:
            elsewhere = ", ".join(n.id for nodes in plan.remote.values() for n in nodes)
            raise Conflict(
                f"resume takes up recipients in the source's cluster only, and {elsewhere} "
                "are in another: start a new transfer to them"
            )
        plan = replace(plan, mode=earlier.mode)
        if plan.transport is Transport.STREAM:
            plan = await self._prepare_stream(plan)
        if plan.file.blake3 is not None and earlier.file.blake3 not in (None, plan.file.blake3):
            raise Conflict(
                f"the source file {earlier.source_file!r} changed since transfer {transfer_id} "
                f"began (it was {binary_size(earlier.file.size)} with BLAKE3 "
                f"{earlier.file.blake3[:16]}..., it is {binary_size(plan.file.size or 0)} with "
                f"{plan.file.blake3[:16]}...): start a new transfer"
            )
        # Stream sinks keep what they verified; the object store keeps nothing: all again.
        plan = replace(plan, resume=plan.transport is Transport.STREAM)
        log.info(
            "transfer %s resumed for %s",
            transfer_id,
            ", ".join(pending),
            extra=about(transfer_id=transfer_id),
        )
        return await self._run(plan, TransferState.resumed(earlier, plan, _now()))

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

    async def _prepare_stream(self, plan: TransferPlan) -> TransferPlan:
        """Know the file's manifest, and check every hop the stream takes; a hop that cannot
        be made sends the transfer through the object store instead, and says why."""
        if plan.file.library_name is not None:
            known = await asyncio.to_thread(self._library.manifest, plan.file.library_name)
            plan = plan.described(known.size, known.chunks, known.blake3)
        else:
            read = await self._agents.request(
                plan.source.cluster,
                ReadManifest(
                    endpoint_id=plan.source.id,
                    path=plan.file.path,
                    chunk_size=self._settings.chunk_size,
                ),
                ManifestRead,
            )
            plan = plan.described(read.size, read.manifest, read.blake3)
        trouble = await self._link_trouble(plan)
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
                recipients=[n.id for n in plan.local],
                stream=stream(0),
                transport=Transport.STREAM,
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
            described = self._library.describe(file)
            path = str(self._library.path(file))
            folder = self._library.folder(file) if file.endswith("/") else None
            return LocatedFile(
                path, file, described.size, described.blake3, library_name=file, folder=folder
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
            event = live.state.recipient_finished(message)
        else:
            outcome = live.state.part_finished(message)
            if outcome is not None:
                self._end(live, outcome)
            return
        if event is not None:
            self._events.publish(event)

    def _end(self, live: _Live, outcome: TransferFinished) -> None:
        snapshot = live.state.finish(outcome, datetime.now(timezone.utc))
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
        if self._settings.auto_resume and snapshot.resumable and snapshot.status in RESUMABLE:
            self.auto_resume([snapshot.id], after_a_death=True)

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
        waiting = list(self._waiting.values())
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        for live in list(self._live.values()):
            await self._save(
                live.state.interrupt("CastRay stopped while this transfer was in flight")
            )
        self._live.clear()
        self._history_writer.shutdown(wait=True)


def _unfinished(transfer: Transfer) -> list[str]:
    """The recipients that did not complete ``transfer``."""
    return [r for r, s in transfer.recipients.items() if s.status is not RecipientStatus.COMPLETED]


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("could not save a transfer to the history: %s", future.exception())
