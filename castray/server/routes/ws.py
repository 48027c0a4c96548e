"""``/ws``: a snapshot of the system, then every event as it happens, in order.

Each message is JSON ``{"type", "seq", "at", "data"}``; ``seq`` numbers events so a client
sees the order and any gap. A heartbeat is sent when nothing happened for a while. Each
client reads from its own bounded queue: a client that falls behind loses its oldest events
and is told so (``events_dropped``); one that stops reading for ``SEND_TIMEOUT`` is
disconnected. Neither slows the server or other clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketState

from castray.config import Settings
from castray.server.events import Event, EventHub, Subscription
from castray.server.groups import GroupService
from castray.server.registry import Registry
from castray.server.transfers import TransferService

router = APIRouter()

HEARTBEAT_EVERY = 15.0
SEND_TIMEOUT = 10.0


@router.websocket("/ws")
async def events(websocket: WebSocket) -> None:
    state = websocket.app.state
    settings: Settings = state.settings
    if not _authorized(websocket, settings):
        await websocket.send_denial_response(
            JSONResponse(
                {"detail": "this CastRay server requires a token: ?token=... or a Bearer header"},
                401,
            )
        )
        return
    hub: EventHub = state.events
    subscription = hub.subscribe()
    try:
        await websocket.accept()
        await _send(websocket, "snapshot", hub.last_seq, _snapshot(state))
        await _stream(websocket, hub, subscription)
    except (WebSocketDisconnect, TimeoutError, RuntimeError):
        pass
    finally:
        subscription.close()
        if websocket.client_state is WebSocketState.CONNECTED:
            # The client may go at any moment; then there is nothing left to close.
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await websocket.close()


async def _stream(websocket: WebSocket, hub: EventHub, subscription: Subscription) -> None:
    closed = asyncio.create_task(_until_closed(websocket))
    try:
        while not closed.done():
            getter = asyncio.create_task(subscription.queue.get())
            done, _ = await asyncio.wait(
                {getter, closed}, timeout=HEARTBEAT_EVERY, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
                if not closed.done():
                    await _send(websocket, "heartbeat", hub.last_seq, {})
                continue
            if subscription.lagged:
                subscription.lagged = False
                await _send(
                    websocket, "events_dropped", hub.last_seq, {"reason": "client too slow"}
                )
            event: Event = getter.result()
            await _send(websocket, event.type, event.seq, event.data, event.at)
    finally:
        closed.cancel()


async def _until_closed(websocket: WebSocket) -> None:
    """Drain what the client sends; return when it goes away."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await websocket.receive_text()


async def _send(
    websocket: WebSocket, kind: str, seq: int, data: dict[str, Any], at: float | None = None
) -> None:
    message = {"type": kind, "seq": seq, "at": at or time.time(), "data": data}
    await asyncio.wait_for(websocket.send_json(message), SEND_TIMEOUT)


def _snapshot(state: Any) -> dict[str, Any]:
    registry: Registry = state.registry
    transfers: TransferService = state.transfers
    groups: GroupService = state.groups
    return {
        "clusters": [c.model_dump(mode="json") for c in registry.clusters()],
        "nodes": [n.model_dump(mode="json") for n in registry.nodes()],
        "transfers": [t.model_dump(mode="json") for t in transfers.live()],
        "groups": [g.model_dump(mode="json") for g in groups.all()],
    }


def _authorized(websocket: WebSocket, settings: Settings) -> bool:
    if settings.token is None:
        return True
    expected = settings.token.get_secret_value().encode()
    header = websocket.headers.get("authorization", "")
    given = header.removeprefix("Bearer ").strip() or websocket.query_params.get("token", "")
    return secrets.compare_digest(given.encode(), expected)
