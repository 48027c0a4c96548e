"""Retention of received copies: a periodic sweep by ``received_retention`` and
``storage_quota_bytes`` on every endpoint of every connected cluster, and the usage report.

Each endpoint does its own sweep (see ``castray.agent.storage``): it never touches a partial
file or a file it is sending. Each removal becomes a ``copy_removed`` event, a log line and a
row of the history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timezone

from castray.config import Settings
from castray.errors import CastRayError
from castray.models import (
    ClusterStatus,
    CopyRemoval,
    CopyRemovedEvent,
    EndpointStorage,
    StorageReport,
)
from castray.protocol import StorageSwept, SweepStorage
from castray.server.events import EventHub
from castray.server.gateway import AgentGateway
from castray.server.history import History
from castray.server.logs import about
from castray.server.registry import Registry

log = logging.getLogger(__name__)

REMOVALS_SHOWN = 50
"""Removals ``GET /api/storage`` lists, newest first."""


class StorageService:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        agents: AgentGateway,
        history: History,
        events: EventHub,
        pinned: Callable[[], dict[str, list[str]]] = dict,
    ) -> None:
        self._settings = settings
        self._pinned = pinned
        """Per endpoint, the pinned copies no sweep removes."""
        self._registry = registry
        self._agents = agents
        self._history = history
        self._events = events
        self._task: asyncio.Task[None] | None = None

    @property
    def limited(self) -> bool:
        return bool(self._settings.received_retention or self._settings.storage_quota_bytes)

    def start(self) -> None:
        """Sweep every ``storage_sweep_interval`` when a limit is set."""
        if self.limited:
            self._task = asyncio.create_task(self._sweep_forever(), name="storage-sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def report(self) -> StorageReport:
        """Usage per endpoint as the endpoints count it now, and the latest removals."""
        endpoints, unreachable, _ = await self._ask(SweepStorage(remove=False))
        latest = await asyncio.to_thread(self._history.removals, REMOVALS_SHOWN)
        return self._report(endpoints, unreachable, latest)

    async def sweep(self) -> StorageReport:
        """Sweep now; what is kept, and the removals of this sweep."""
        settings = self._settings
        asked = SweepStorage(
            retention=settings.received_retention,
            quota=settings.storage_quota_bytes,
            keep=self._pinned(),
        )
        endpoints, unreachable, removals = await self._ask(asked)
        if removals:
            await asyncio.to_thread(self._history.save_removals, removals)
        for removal in removals:
            log.info(
                "removed %s from %s: %s",
                removal.name,
                removal.endpoint,
                removal.reason,
                extra=about(endpoint=removal.endpoint, cluster=removal.cluster),
            )
            self._events.publish(CopyRemovedEvent(removal=removal))
        return self._report(endpoints, unreachable, list(reversed(removals)))

    def _report(
        self, endpoints: list[EndpointStorage], unreachable: list[str], removals: list[CopyRemoval]
    ) -> StorageReport:
        settings = self._settings
        return StorageReport(
            endpoints=endpoints,
            unreachable=unreachable,
            received_retention=settings.received_retention or None,
            storage_quota_bytes=settings.storage_quota_bytes or None,
            removals=removals,
        )

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.storage_sweep_interval)
            try:
                await self.sweep()
            except Exception:
                log.exception(
                    "the storage sweep failed; trying again in %g s",
                    self._settings.storage_sweep_interval,
                )

    async def _ask(
        self, body: SweepStorage
    ) -> tuple[list[EndpointStorage], list[str], list[CopyRemoval]]:
        """Every connected cluster's endpoints, at once: what each keeps, who could not be
        asked, and what was removed."""
        clusters = [
            c.name for c in self._registry.clusters() if c.status is ClusterStatus.CONNECTED
        ]
        answers = await asyncio.gather(
            *(self._agents.request(name, body, StorageSwept) for name in clusters),
            return_exceptions=True,
        )
        now = datetime.now(timezone.utc)
        endpoints: list[EndpointStorage] = []
        unreachable: list[str] = []
        removals: list[CopyRemoval] = []
        for cluster, answer in zip(clusters, answers, strict=True):
            if isinstance(answer, CastRayError):
                unreachable.append(cluster)
                continue
            if isinstance(answer, BaseException):
                raise answer
            unreachable += answer.unreachable
            for endpoint, usage in sorted(answer.endpoints.items()):
                oldest = (
                    datetime.fromtimestamp(usage.oldest, timezone.utc)
                    if usage.oldest is not None
                    else None
                )
                endpoints.append(
                    EndpointStorage(
                        endpoint=endpoint,
                        cluster=cluster,
                        files=usage.files,
                        bytes=usage.bytes,
                        oldest=oldest,
                    )
                )
                removals += [
                    CopyRemoval(
                        endpoint=endpoint,
                        cluster=cluster,
                        name=r.name,
                        size=r.size,
                        reason=r.reason,
                        at=now,
                    )
                    for r in usage.removed
                ]
        return endpoints, unreachable, removals
