"""``/ws``: a snapshot of the system, then every event as it happens, in order.

Each message is JSON ``{"type", "seq", "at", "data"}``; ``seq`` numbers events so a client
sees the order and any gap. A heartbeat is sent when nothing happened for a while. Each
client reads from its own bounded queue: a client that falls behind loses its oldest events
and is told so (``events_dropped``); one that takes longer than ``ws_send_timeout`` to take
an event, or stops answering pings, is disconnected. Neither slows the server or others.

With a token set, a client proves it holds it by a bearer header or ``?token=`` (refused with
HTTP 403 before the handshake when wrong), or, as the page does so that the token never appears in
a URL or a log, by its first message ``{"type": "auth", "token": "..."}`` (closed with code
4401 when missing or wrong).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from castray.config import Settings
from castray.models import EventsDroppedEvent, HeartbeatEvent, SnapshotEvent
from castray.server.deps import token_matches
from castray.server.events import Event, EventHub, Subscription
from castray.server.groups import GroupService
from castray.server.registry import Registry
from castray.server.transfers import TransferService

router = APIRouter()

AUTH_TIMEOUT = 10.0
"""Seconds a client that gave no token in its handshake has to send its auth message."""
UNAUTHORIZED = 4401
POLICY_VIOLATION = 1008
GOING_AWAY = 1001


@router.websocket("/ws")
async def events(websocket: WebSocket) -> None:
    state = websocket.app.state
    settings: Settings = state.settings
    given = _handshake_token(websocket)
    if given is not None and not token_matches(settings, given):
        # Closing before the handshake answers HTTP 403, quietly (a denial response body
        # makes uvicorn log an error for every wrong guess).
        await websocket.close(POLICY_VIOLATION, "not this server's token")
        return
    hub: EventHub = state.events
    subscription = hub.subscribe()
    timeout = settings.ws_send_timeout
    try:
        await websocket.accept()
        if settings.token is not None and given is None and not await _authenticated(websocket):
            await websocket.close(UNAUTHORIZED, "this server needs its token: send auth first")
            return
        await _send(websocket, hub.current(_snapshot(state)), timeout)
        await _stream(websocket, hub, subscription, timeout)
    except (WebSocketDisconnect, TimeoutError, RuntimeError):
        pass
    finally:
        subscription.close()
        if websocket.client_state is WebSocketState.CONNECTED:
            # The client may go at any moment; then there is nothing left to close.
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await websocket.close()


async def _authenticated(websocket: WebSocket) -> bool:
    """Whether the client's first message is ``{"type": "auth", "token": <the token>}``."""
    try:
        first = await asyncio.wait_for(websocket.receive_json(), AUTH_TIMEOUT)
    except (TimeoutError, ValueError, KeyError):
        return False
    settings: Settings = websocket.app.state.settings
    return (
        isinstance(first, dict)
        and first.get("type") == "auth"
        and isinstance(first.get("token"), str)
        and token_matches(settings, first["token"])
    )


async def _stream(
    websocket: WebSocket, hub: EventHub, subscription: Subscription, timeout: float
) -> None:
    closed = asyncio.create_task(_until_closed(websocket))
    stopping = asyncio.create_task(websocket.app.state.stopping.wait())
    try:
        while not closed.done():
            getter = asyncio.create_task(subscription.queue.get())
            done, _ = await asyncio.wait(
                {getter, closed, stopping},
                timeout=websocket.app.state.settings.ws_heartbeat_interval,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if stopping in done:
                getter.cancel()
                await websocket.close(GOING_AWAY, "the server is stopping")
                return
            if getter not in done:
                getter.cancel()
                if not closed.done():
                    await _send(websocket, hub.current(HeartbeatEvent()), timeout)
                continue
            if subscription.lagged:
                subscription.lagged = False
                dropped = EventsDroppedEvent(reason="client too slow")
                await _send(websocket, hub.current(dropped), timeout)
            await _send(websocket, getter.result(), timeout)
    finally:
        closed.cancel()
        stopping.cancel()


async def _until_closed(websocket: WebSocket) -> None:
    """Drain what the client sends; return when it goes away."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await websocket.receive_text()


async def _send(websocket: WebSocket, event: Event, timeout: float) -> None:
    message = {"type": event.type.value, "seq": event.seq, "at": event.at, "data": event.data}
    await asyncio.wait_for(websocket.send_json(message), timeout)


def _snapshot(state: Any) -> SnapshotEvent:
    registry: Registry = state.registry
    transfers: TransferService = state.transfers
    groups: GroupService = state.groups
    return SnapshotEvent(
        clusters=registry.clusters(),
        nodes=registry.nodes(),
        transfers=transfers.live(),
        groups=groups.all(),
    )


def _handshake_token(websocket: WebSocket) -> str | None:
    """A token given with the handshake (bearer header or ``?token=``), if any."""
    header = websocket.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return websocket.query_params.get("token")
