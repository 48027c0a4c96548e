"""The event hub: services publish typed events (the catalogue in ``models``); subscribers
(WebSocket clients) read them, numbered.

Each subscriber has a bounded queue; a subscriber that falls behind loses its oldest events
and is told so by a ``lagged`` flag, so a slow client never slows the server or others.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from castray.models import EventData, EventType

Publish = Callable[[EventData], None]


@dataclass(frozen=True)
class Event:
    """A published event, numbered, its payload already in JSON form (sent as it is)."""

    seq: int
    type: EventType
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
            self._hub.dropped += 1
        self.queue.put_nowait(event)

    def close(self) -> None:
        self._hub.unsubscribe(self)


class EventHub:
    """Fan-out of events to subscribers, in order, numbered."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self._observers: list[Publish] = []
        self._seq = 0
        self.dropped = 0
        """Events subscribers that fell behind lost, in all."""

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def observe(self, observer: Publish) -> None:
        """Call ``observer`` with each event's payload as it is published (in-process
        bookkeeping such as metrics: it must be quick and must not raise)."""
        self._observers.append(observer)

    @property
    def last_seq(self) -> int:
        """Number of the newest event (0 before the first)."""
        return self._seq

    def publish(self, payload: EventData) -> Event:
        self._seq += 1
        event = Event(self._seq, payload.kind, payload.model_dump(mode="json"))
        for subscriber in self._subscribers:
            subscriber.offer(event)
        for observer in self._observers:
            observer(payload)
        return event

    def current(self, payload: EventData) -> Event:
        """A message that is not an event of its own (a snapshot, a heartbeat): it carries the
        number of the newest event, so a client knows where it stands."""
        return Event(self._seq, payload.kind, payload.model_dump(mode="json"))

    def publisher_for_threads(self) -> Publish:
        """A ``publish`` that worker threads may call: it hands the event to this loop."""
        loop = asyncio.get_running_loop()

        def publish(payload: EventData) -> None:
            # After shutdown there is no one left to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.publish, payload)

        return publish

    def subscribe(self, size: int | None = None) -> Subscription:
        """A new subscriber's queue: the hub's size (``ws_queue_events``) unless given."""
        subscription = Subscription(self, size or self._queue_size)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
