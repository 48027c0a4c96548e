"""The transfer service: plans transfers, follows them through their states, keeps history.

A transfer goes ``queued`` (accepted, source file opened) -> ``running`` (first verified
bytes) -> ``completed`` | ``partially_failed`` | ``failed`` | ``cancelled``; transfers that
were in flight when CastRay stopped are ``interrupted`` in the history. Each recipient goes
``pending`` -> ``running`` -> ``completed`` | ``failed`` | ``cancelled``. Status objects
handed out are immutable snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import PurePosixPath

from castray.config import Settings
from castray.errors import (
    BadFileName,
    CastRayError,
    FileMissing,
    NodeUnavailable,
    TransferNotFound,
)
from castray.models import (
    FileInfo,
    Node,
    NodeStatus,
    RecipientState,
    RecipientStatus,
    Transfer,
    TransferCreate,
    TransferPage,
    TransferStatus,
)
from castray.protocol import (
    AgentMessage,
    CancelTransfer,
    ImportTransfer,
    ProbeFile,
    RecipientFinished,
    StartTransfer,
    TransferFinished,
    TransferProgress,
)
from castray.server.events import EventHub
from castray.server.history import History
from castray.server.library import Library, check_file_name
from castray.server.registry import Registry
from castray.server.supervisor import Supervisor
from castray.server.targets import resolve_recipients

log = logging.getLogger(__name__)

CANCEL_WAIT = 30.0
"""Seconds ``DELETE /api/transfers/{id}`` waits for the partial files to be gone."""


@dataclass
class _Live:
    """A transfer in flight; mutated only on the event loop."""

    transfer: Transfer
    clusters: list[str]
    """The source's cluster first, then every other cluster with recipients."""
    recipients: dict[str, RecipientState] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    finished_parts: list[TransferFinished] = field(default_factory=list)


class TransferService:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        supervisor: Supervisor,
        library: Library,
        history: History,
        events: EventHub,
        groups: dict[str, list[str]],
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._supervisor = supervisor
        self._library = library
        self._history = history
        self._events = events
        self._groups = groups
        self._live: dict[str, _Live] = {}
        self._history_writer = ThreadPoolExecutor(1, thread_name_prefix="history")
        supervisor.on_transfer_message = self._on_agent_message
        supervisor.on_cluster_down = self._cluster_down

    # ---- requests ----------------------------------------------------------------------

    async def start(self, request: TransferCreate) -> Transfer:
        """Check the request, open the file at the source, and let the transfer run."""
        source = self._registry.node(request.source_node)
        if source.status is not NodeStatus.ALIVE:
            raise NodeUnavailable(f"source {source.id!r} is {source.status.value}")
        recipients = resolve_recipients(
            self._registry,
            self._groups,
            request.mode,
            source.id,
            request.recipients,
            request.group,
        )
        path, name, size, digest = await self._locate(request.file)
        local, remote = _split_by_cluster(source, recipients)
        if remote and size is None:
            probed = await self._supervisor.request(
                source.cluster, ProbeFile(endpoint_id=source.id, path=path)
            )
            size = int(probed["size"])
        now = datetime.now(timezone.utc)
        transfer = Transfer(
            id=uuid.uuid4().hex[:16],
            status=TransferStatus.QUEUED,
            mode=request.mode,
            source_node=source.id,
            file=FileInfo(name=name, size=size or 0, blake3=digest),
            recipients={r.id: RecipientState(status=RecipientStatus.PENDING) for r in recipients},
            bytes_total=size or 0,
            created_at=now,
            started_at=now,
        )
        live = _Live(transfer, [source.cluster, *remote], dict(transfer.recipients))
        self._live[transfer.id] = live
        # Announced before any agent can report on it, so watchers see it start first.
        self._events.publish("transfer_started", transfer=transfer.model_dump(mode="json"))
        common = {
            "transfer_id": transfer.id,
            "file_name": name,
            "expected_blake3": digest,
            "chunk_size": self._settings.chunk_size,
            "window": self._settings.transfer_window,
        }
        try:
            # Each other cluster's agent listens first; the source's agent then streams to it.
            exports = []
            for cluster, nodes in remote.items():
                listening = await self._supervisor.request(
                    cluster,
                    ImportTransfer(
                        source=source.id,
                        size=size or 0,
                        recipients=[n.id for n in _chain_order(nodes)],
                        **common,
                    ),
                )
                exports.append((str(listening["host"]), int(listening["port"])))
            result = await self._supervisor.request(
                source.cluster,
                StartTransfer(
                    source=source.id,
                    path=path,
                    recipients=[r.id for r in _chain_order(local)],
                    exports=exports,
                    **common,
                ),
            )
        except Exception as exc:
            self._live.pop(transfer.id, None)
            await self._cancel_parts(live)
            failed = transfer.model_copy(
                update={"status": TransferStatus.FAILED, "error": str(exc)}
            )
            self._events.publish("transfer_finished", transfer=failed.model_dump(mode="json"))
            raise
        # The agent's first reports may have been handled already (even its last, for a
        # small file): the sized snapshot is saved only while the transfer is still live.
        if transfer.id in self._live:
            self._sized(live, int(result["size"]))
            await self._save(live.transfer)
        return live.transfer

    async def cancel(self, transfer_id: str) -> Transfer:
        """Stop a transfer in flight; its partial files are removed. Finished ones stay."""
        live = self._live.get(transfer_id)
        if live is None:
            return await self.get(transfer_id)
        await self._cancel_parts(live)
        try:
            await asyncio.wait_for(live.done.wait(), CANCEL_WAIT)
        except TimeoutError:
            log.warning("transfer %s did not confirm its cancellation", transfer_id)
        return live.transfer

    async def _cancel_parts(self, live: _Live) -> None:
        """Ask every agent with a part of the transfer to stop it (finished parts are gone)."""
        for cluster in live.clusters:
            with contextlib.suppress(CastRayError):
                await self._supervisor.request(
                    cluster, CancelTransfer(transfer_id=live.transfer.id)
                )

    async def get(self, transfer_id: str) -> Transfer:
        live = self._live.get(transfer_id)
        if live is not None:
            return live.transfer
        stored = await asyncio.to_thread(self._history.get, transfer_id)
        if stored is None:
            raise TransferNotFound(f"no transfer {transfer_id!r}; GET /api/transfers lists them")
        return stored

    async def page(self, limit: int, offset: int) -> TransferPage:
        stored, total = await asyncio.to_thread(self._history.page, limit, offset)
        transfers = [self._live[t.id].transfer if t.id in self._live else t for t in stored]
        return TransferPage(transfers=transfers, total=total, limit=limit, offset=offset)

    def live(self) -> list[Transfer]:
        return [live.transfer for live in self._live.values()]

    async def wait(self, transfer_id: str, timeout: float) -> Transfer:
        """Wait for a transfer to finish (used by create-and-transfer callers and the CLI)."""
        live = self._live.get(transfer_id)
        if live is not None:
            await asyncio.wait_for(live.done.wait(), timeout)
        return await self.get(transfer_id)

    async def _locate(self, file: str) -> tuple[str, str, int | None, str | None]:
        """(path for the source, file name at the recipients, size, BLAKE3) of ``file``."""
        if self._library.has(file):
            described = await asyncio.to_thread(self._library.describe, file)
            return str(self._library.path(file)), file, described.size, described.blake3
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
        return str(relative), name, None, None

    # ---- what the agents report ----------------------------------------------------------

    def _cluster_down(self, cluster: str, reason: str) -> None:
        """A cluster was lost or disconnected: its transfers in flight fail with the reason."""
        for live in [live for live in self._live.values() if cluster in live.clusters]:
            log.warning(
                "transfer %s failed: cluster %s is down (%s)", live.transfer.id, cluster, reason
            )
            self._finalize(
                live,
                TransferFinished(
                    transfer_id=live.transfer.id,
                    size=live.transfer.bytes_total,
                    blake3=live.transfer.file.blake3,
                    error=f"cluster {cluster} is down: {reason}",
                ),
            )

    def _on_agent_message(self, message: AgentMessage) -> None:
        if not isinstance(message, TransferProgress | RecipientFinished | TransferFinished):
            return
        live = self._live.get(message.transfer_id)
        if live is None:
            return
        if isinstance(message, TransferProgress):
            self._progress(live, message)
        elif isinstance(message, RecipientFinished):
            self._recipient_finished(live, message)
        else:
            self._finished(live, message)

    def _sized(self, live: _Live, size: int) -> None:
        if live.transfer.bytes_total != size:
            self._update(
                live, bytes_total=size, file=live.transfer.file.model_copy(update={"size": size})
            )

    def _save(self, snapshot: Transfer) -> asyncio.Future[None]:
        """Write to the history on one thread, so writes land in the order they were made."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._history_writer, self._history.save, snapshot)

    def _progress(self, live: _Live, message: TransferProgress) -> None:
        self._sized(live, message.bytes_total)
        for rid, done in message.bytes_done.items():
            state = live.recipients.get(rid)
            if state is not None and state.status in (
                RecipientStatus.PENDING,
                RecipientStatus.RUNNING,
            ):
                recipient_status = RecipientStatus.RUNNING if done else state.status
                live.recipients[rid] = state.model_copy(
                    update={"bytes_done": done, "status": recipient_status}
                )
        status = live.transfer.status
        if status is TransferStatus.QUEUED and any(message.bytes_done.values()):
            status = TransferStatus.RUNNING
        self._update(live, status=status, recipients=dict(live.recipients))
        self._events.publish(
            "transfer_progress",
            transfer_id=live.transfer.id,
            bytes_total=live.transfer.bytes_total,
            bytes_done=message.bytes_done,
        )

    def _recipient_finished(self, live: _Live, message: RecipientFinished) -> None:
        if message.ok:
            state = RecipientState(
                status=RecipientStatus.COMPLETED,
                bytes_done=live.transfer.bytes_total,
                path=message.path,
            )
        else:
            previous = live.recipients.get(message.recipient)
            state = RecipientState(
                status=RecipientStatus.FAILED,
                bytes_done=previous.bytes_done if previous else 0,
                error=message.error,
            )
        live.recipients[message.recipient] = state
        self._update(live, recipients=dict(live.recipients))
        kind = "recipient_completed" if message.ok else "recipient_failed"
        self._events.publish(
            kind,
            transfer_id=live.transfer.id,
            recipient=message.recipient,
            recipient_state=state.model_dump(mode="json"),
        )

    def _finished(self, live: _Live, message: TransferFinished) -> None:
        """One agent's part ended; the transfer ends when every part has."""
        live.finished_parts.append(message)
        if len(live.finished_parts) < len(live.clusters):
            return
        parts = live.finished_parts
        errors = [p.error for p in parts if p.error]
        self._finalize(
            live,
            TransferFinished(
                transfer_id=message.transfer_id,
                size=max(p.size for p in parts),
                blake3=next((p.blake3 for p in parts if p.blake3), None),
                cancelled=any(p.cancelled for p in parts),
                error="; ".join(errors) or None,
                chunks_resent=sum(p.chunks_resent for p in parts),
            ),
        )

    def _finalize(self, live: _Live, message: TransferFinished) -> None:
        """The transfer's final state from the outcome of all its parts."""
        self._sized(live, message.size)
        recipients = dict(live.recipients)
        for rid, state in recipients.items():
            if state.status in (RecipientStatus.PENDING, RecipientStatus.RUNNING):
                recipients[rid] = state.model_copy(
                    update={
                        "status": RecipientStatus.CANCELLED
                        if message.cancelled
                        else RecipientStatus.FAILED,
                        "error": None if message.cancelled else (message.error or "not finished"),
                    }
                )
        ok = sum(1 for s in recipients.values() if s.status is RecipientStatus.COMPLETED)
        if message.cancelled:
            status = TransferStatus.CANCELLED
        elif ok == len(recipients):
            status = TransferStatus.COMPLETED
        elif ok:
            status = TransferStatus.PARTIALLY_FAILED
        else:
            status = TransferStatus.FAILED
        finished = datetime.now(timezone.utc)
        started = live.transfer.started_at or live.transfer.created_at
        seconds = max((finished - started).total_seconds(), 1e-6)
        delivered = ok * live.transfer.bytes_total
        self._update(
            live,
            status=status,
            recipients=recipients,
            finished_at=finished,
            throughput_bps=round(delivered / seconds, 1) if delivered else None,
            file=live.transfer.file.model_copy(update={"blake3": message.blake3}),
            chunks_resent=message.chunks_resent,
            error=message.error,
        )
        del self._live[live.transfer.id]
        live.done.set()
        snapshot = live.transfer
        self._save(snapshot).add_done_callback(_log_failure)
        self._events.publish("transfer_finished", transfer=snapshot.model_dump(mode="json"))

    def _update(self, live: _Live, **changes: object) -> None:
        live.transfer = live.transfer.model_copy(update=changes)

    async def close(self) -> None:
        """At shutdown: what is still in flight is recorded as interrupted."""
        for live in list(self._live.values()):
            self._update(
                live,
                status=TransferStatus.INTERRUPTED,
                error="CastRay stopped while this transfer was in flight",
            )
            await self._save(live.transfer)
        self._live.clear()
        self._history_writer.shutdown(wait=True)


def _split_by_cluster(
    source: Node, recipients: list[Node]
) -> tuple[list[Node], dict[str, list[Node]]]:
    """Recipients in the source's cluster, and those of every other cluster."""
    local = [r for r in recipients if r.cluster == source.cluster]
    remote: dict[str, list[Node]] = {}
    for node in recipients:
        if node.cluster != source.cluster:
            remote.setdefault(node.cluster, []).append(node)
    return local, remote


def _chain_order(recipients: list[Node]) -> list[Node]:
    """Relay order: recipients on the same Ray node next to each other, so each hop between
    hosts is crossed once."""
    return sorted(recipients, key=lambda n: (n.address, n.ray_node_id, n.id))


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("could not save a transfer to the history: %s", future.exception())
