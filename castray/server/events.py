"""The event hub: services publish typed events; subscribers (WebSocket clients) read them.

Each subscriber has a bounded queue; a subscriber that falls behind loses its oldest events
and is told so by a ``lagged`` flag, so a slow client never slows the server or others.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SUBSCRIBER_QUEUE = 1000


@dataclass(frozen=True)
class Event:
    seq: int
    type: str
    data: dict[str, Any]
    at: float = field(default_factory=time.time)


class Subscription:
    def __init__(self, hub: EventHub, size: int) -> None:
        self._hub = hub
        self.queue: asyncio.Queue[Event] = asyncio.Queue(size)
        self.lagged = False

    def offer(self, event: Event) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.lagged = True
        self.queue.put_nowait(event)

    def close(self) -> None:
        self._hub.unsubscribe(self)


class EventHub:
    """Fan-out of events to subscribers, in order, numbered."""

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self._seq = 0

    @property
    def last_seq(self) -> int:
        """Number of the newest event (0 before the first)."""
        return self._seq

    def publish(self, type_: str, **data: Any) -> Event:
        self._seq += 1
        event = Event(self._seq, type_, data)
        for subscriber in self._subscribers:
            subscriber.offer(event)
        return event

    def publisher_for_threads(self) -> Callable[..., None]:
        """A ``publish`` that worker threads may call: it hands the event to this loop."""
        loop = asyncio.get_running_loop()

        def publish(type_: str, **data: Any) -> None:
            # After shutdown there is no one left to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(functools.partial(self.publish, type_, **data))

        return publish

    def subscribe(self, size: int = SUBSCRIBER_QUEUE) -> Subscription:
        subscription = Subscription(self, size)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
