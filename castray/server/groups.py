"""Named groups of endpoints for multicast; stored in the history database."""

from __future__ import annotations

import asyncio

from castray.errors import Conflict, GroupNotFound
from castray.models import Group, GroupDeletedEvent, GroupSavedEvent
from castray.server.events import EventHub
from castray.server.history import History
from castray.server.registry import Registry


class GroupService:
    """Groups by name; ``members`` is the live mapping the planners read."""

    def __init__(self, registry: Registry, history: History, events: EventHub) -> None:
        self._registry = registry
        self._history = history
        self._events = events
        self.members: dict[str, list[str]] = {g.name: g.members for g in history.groups()}

    def all(self) -> list[Group]:
        return [Group(name=name, members=m) for name, m in sorted(self.members.items())]

    def get(self, name: str) -> Group:
        if name not in self.members:
            raise GroupNotFound(f"no group {name!r}; GET /api/groups lists them")
        return Group(name=name, members=self.members[name])

    async def create(self, group: Group) -> Group:
        if group.name in self.members:
            raise Conflict(f"group {group.name!r} exists already; PUT it to change its members")
        return await self._save(group)

    async def replace(self, name: str, members: list[str]) -> Group:
        self.get(name)
        return await self._save(Group(name=name, members=members))

    async def delete(self, name: str) -> None:
        self.get(name)
        del self.members[name]
        await asyncio.to_thread(self._history.delete_group, name)
        self._events.publish(GroupDeletedEvent(name=name))

    async def _save(self, group: Group) -> Group:
        members = list(dict.fromkeys(group.members))
        for member in members:
            self._registry.node(member)
        group = Group(name=group.name, members=members)
        self.members[group.name] = members
        await asyncio.to_thread(self._history.save_group, group)
        self._events.publish(GroupSavedEvent(group=group))
        return group
