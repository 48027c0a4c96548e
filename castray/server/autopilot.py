"""Autonomous transfers: endpoints that send generated files to each other on their own.

The prototype's "nodes start transfers on their own", kept as a demo of live traffic: each
enabled endpoint, every ``auto_transfer_interval`` seconds, generates a small random file and
sends it to a random other alive endpoint of its cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from castray.config import Settings
from castray.errors import CastRayError
from castray.models import ContentType, NodeStatus, TransferCreate, TransferMode
from castray.server.generator import PRESETS, Generator
from castray.server.library import Library
from castray.server.registry import Registry
from castray.server.transfers import TransferService

log = logging.getLogger(__name__)

SIZES = [PRESETS["small"], PRESETS["medium"], PRESETS["large"]]
DEMO_FILE_TIMEOUT = 120.0


class Autopilot:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        library: Library,
        generator: Generator,
        transfers: TransferService,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._library = library
        self._generator = generator
        self._transfers = transfers
        self._enabled: dict[str, bool] = {}
        self._everyone = settings.demo_traffic
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._rng = random.Random()  # noqa: S311 - picks demo peers, nothing secret

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="autopilot")

    async def stop(self) -> None:
        for task in [self._task, *self._sending]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def set(self, node_id: str, enabled: bool) -> None:
        self._registry.node(node_id)
        self._enabled[node_id] = enabled

    def enabled(self) -> dict[str, bool]:
        return {n.id: self._enabled.get(n.id, self._everyone) for n in self._registry.nodes()}

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.auto_transfer_interval)
            for node_id, on in self.enabled().items():
                if on:
                    task = asyncio.create_task(self._send_from(node_id))
                    self._sending.add(task)
                    task.add_done_callback(self._sending.discard)

    async def _send_from(self, node_id: str) -> None:
        try:
            source = self._registry.node(node_id)
        except CastRayError:
            return
        peers = [
            n
            for n in self._registry.nodes()
            if n.id != node_id and n.cluster == source.cluster and n.status is NodeStatus.ALIVE
        ]
        if source.status is not NodeStatus.ALIVE or not peers:
            return
        peer = self._rng.choice(peers)
        size = self._rng.choice(SIZES)
        name = f"auto_{node_id}_{self._rng.randrange(16**8):08x}.bin"
        try:
            await self._generator.create(size, ContentType.RANDOM, name)
            started = await self._transfers.start(
                TransferCreate(
                    source_node=node_id, file=name, mode=TransferMode.UNICAST, recipients=[peer.id]
                )
            )
            # The demo file has done its job once sent; keep the library for users' files.
            await self._transfers.wait(started.id, timeout=DEMO_FILE_TIMEOUT)
        except (CastRayError, TimeoutError) as exc:
            log.info("autonomous transfer from %s: %s", node_id, exc)
        finally:
            with contextlib.suppress(CastRayError, OSError):
                await asyncio.to_thread(self._library.delete, name)
