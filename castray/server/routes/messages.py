"""``/api/send`` and ``/api/nodes/{id}/messages``: short text/JSON messages."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from castray.models import MessageResult, MessageSend, ReceivedMessage
from castray.server.deps import MessagesDep

router = APIRouter(tags=["messages"])


@router.post("/send")
async def send_message(body: MessageSend, messages: MessagesDep) -> MessageResult:
    """Deliver a message through the recipients' endpoint actors; says who got it."""
    return await messages.send(body)


@router.get("/nodes/{node_id}/messages")
async def received_messages(
    node_id: str, messages: MessagesDep, count: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[ReceivedMessage]:
    """The newest messages the node received, newest first."""
    return await messages.received(node_id, count)
