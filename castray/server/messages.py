"""Short text/JSON messages, delivered through the recipients' endpoint actors."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict

from castray.config import Settings
from castray.errors import InvalidRequest
from castray.models import (
    MessageReceivedEvent,
    MessageResult,
    MessageSend,
    MessageType,
    ReceivedMessage,
    SentMessage,
)
from castray.protocol import Delivered, DeliverMessage, MessagesRead, ReadMessages
from castray.server.events import EventHub
from castray.server.gateway import AgentGateway
from castray.server.registry import Registry
from castray.server.targets import resolve_recipients


class MessageService:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        agents: AgentGateway,
        events: EventHub,
        groups: dict[str, list[str]],
    ) -> None:
        self._registry = registry
        self._max_bytes = settings.message_max_bytes
        self._agents = agents
        self._events = events
        self._groups = groups

    async def send(self, request: MessageSend) -> MessageResult:
        sender = self._registry.node(request.sender)
        if request.message_type is MessageType.TEXT and not isinstance(request.content, str):
            raise InvalidRequest("a text message's content must be a string")
        encoded = json.dumps(request.content)
        if len(encoded.encode()) > self._max_bytes:
            raise InvalidRequest(
                f"a message is at most {self._max_bytes} bytes (CASTRAY_MESSAGE_MAX_BYTES); "
                "send larger content as a file"
            )
        recipients = resolve_recipients(
            self._registry,
            self._groups,
            request.cast_type,
            sender.id,
            request.recipients,
            request.group_id,
        )
        message = SentMessage(
            message_id=uuid.uuid4().hex[:16],
            sender=sender.id,
            message_type=request.message_type,
            content=request.content,
            sent_at=time.time(),
        )
        by_cluster: dict[str, list[str]] = defaultdict(list)
        for node in recipients:
            by_cluster[node.cluster].append(node.id)
        delivered: list[str] = []
        failed: dict[str, str] = {}
        for cluster, ids in by_cluster.items():
            result = await self._agents.request(
                cluster,
                DeliverMessage(sender=sender.id, recipients=ids, message=message),
                Delivered,
            )
            delivered += result.delivered
            failed.update(result.failed)
        for rid in delivered:
            self._events.publish(MessageReceivedEvent(recipient=rid, message=message))
        return MessageResult(
            success=not failed,
            message_id=message.message_id,
            delivered=delivered,
            failed=failed,
        )

    async def received(self, endpoint_id: str, count: int) -> list[ReceivedMessage]:
        node = self._registry.node(endpoint_id)
        result = await self._agents.request(
            node.cluster, ReadMessages(endpoint_id=endpoint_id, count=count), MessagesRead
        )
        return result.messages
