"""The event hub: ordered, numbered, and a slow subscriber only loses its own oldest events."""

from __future__ import annotations

import asyncio

from castray.models import EventType, GroupDeletedEvent
from castray.server.events import EventHub


def test_subscribers_get_numbered_events_in_order() -> None:
    async def scenario() -> list[tuple[int, str]]:
        hub = EventHub()
        subscription = hub.subscribe()
        hub.publish(GroupDeletedEvent(name="a"))
        hub.publish(GroupDeletedEvent(name="b"))
        return [
            (e.seq, e.type, e.data["name"])
            for e in (subscription.queue.get_nowait() for _ in range(2))
        ]

    assert asyncio.run(scenario()) == [
        (1, EventType.GROUP_DELETED, "a"),
        (2, EventType.GROUP_DELETED, "b"),
    ]


def test_a_full_subscriber_drops_its_oldest_and_is_marked_lagged() -> None:
    async def scenario() -> tuple[list[int], bool, int]:
        hub = EventHub()
        slow = hub.subscribe(size=2)
        fast = hub.subscribe(size=10)
        for n in range(5):
            hub.publish(GroupDeletedEvent(name=f"g{n}"))
        kept = [slow.queue.get_nowait().data["name"] for _ in range(slow.queue.qsize())]
        return kept, slow.lagged, fast.queue.qsize()

    kept, lagged, fast_size = asyncio.run(scenario())
    assert kept == ["g3", "g4"]
    assert lagged is True
    assert fast_size == 5


def test_closed_subscription_receives_nothing_more() -> None:
    async def scenario() -> int:
        hub = EventHub()
        subscription = hub.subscribe()
        subscription.close()
        hub.publish(GroupDeletedEvent(name="after"))
        return subscription.queue.qsize()

    assert asyncio.run(scenario()) == 0
